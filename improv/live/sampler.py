"""Constrained sampling: the model proposes, the grammar and the preset dispose.

This module owns the choice of the machine's next token. ``Sampler`` keeps its
own picture of the stream by observing every token that enters the context
(``observe``, like ``tokens.StreamEncoder.observe``): the tick, the bar grid of
the meter, the machine's sounding notes with their start ticks, the human's
sounding keys, and whether a VELOCITY is waiting for its NOTE_ON. From that it
builds a mask of the tokens that keep the output valid MIDI:

* never PAD or STYLE; TURN only while ``allow_turn`` is set;
* BAR exactly at a bar line, and there it is required before anything else;
  a TIME_SHIFT may land on the next bar line but never cross it;
* VELOCITY only when some NOTE_ON may follow, never repeating the current bin,
  and after it only a NOTE_ON;
* NOTE_OFF only for a note the machine is sounding;
* NOTE_ON never for a key that is sounding, whoever holds it.

The last rule is a decision: the token stream has one sounding set per key
(the encoder turns a second press into NOTE_OFF + NOTE_ON), so if the machine
struck a key the human holds, the next NOTE_OFF of that key could not say whose
note it ends. Forbidding it keeps every note in the context owned by one player.
A human press on a key the machine holds ends the machine's note in the stream,
and the sampler forgets it too (the scheduler owns the actual note-off).

On top come the musical ``Constraints`` of a preset: register, key (fixed, or
inferred from the human's recent notes with Krumhansl-Schmuckler profiles, see
``infer_key``) as a hard lock or a soft lean, maximum polyphony, maximum note
length (a note at its limit forces its NOTE_OFF, and no TIME_SHIFT may run past
it), density bias, then repetition penalty, temperature, top-k and top-p.

If the model puts no finite mass on any allowed token (NaN, all -inf), the
sampler falls back to a safe allowed token instead of failing. Masks are
rebuilt only when the state changes, from precomputed index ranges, so drawing
a token costs tens of microseconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from improv.core import keys, knobs
from improv.core import tokens as tk
from improv.core.grid import BarGrid
from improv.core.key_finder import Key, infer_key
from improv.live.motifs import MotifMemory


class SamplerError(ValueError):
    """Bad constraints or logits; the message says what to change."""


def parse_key(text: str) -> tuple[int, str] | None:
    """``"D dorian"`` -> ``(2, "dorian")``, ``"D"`` -> D major; "auto", "off" or "" -> None."""
    if not text.strip():
        return None
    try:
        return keys.parse_key(text, default_mode="major")
    except ValueError as e:
        raise SamplerError(str(e)) from None


@dataclass(frozen=True)
class Constraints:
    """What the machine may play and how boldly; a preset's sampling section.

    ``max_polyphony`` and ``max_note_ticks`` of 0 mean no limit. ``key`` is
    "off", "auto" (follow the human's recent notes) or e.g. "D dorian";
    ``scale_lock`` makes the key a hard mask, otherwise out-of-scale notes only
    lose ``scale_bias`` logits.
    """

    temperature: float = 1.0  # below GREEDY_BELOW (1e-3): greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; CTRL-style, over the machine's recent NOTE_ONs
    repetition_window: int = 16
    density: float = 0.0  # + favours NOTE_ON, - favours TIME_SHIFT (logits)
    register_low: int = tk.LOWEST_PITCH
    register_high: int = tk.HIGHEST_PITCH
    register_follow: int = 0  # 0 = off; N = stay within N semitones of the player's median
    echo: float = 0.0  # logits towards continuing the call's melodic shapes (0 = off)
    max_polyphony: int = 0
    max_note_ticks: int = 4 * 4 * tk.TICKS_PER_QUARTER
    key: str = "off"
    scale_lock: bool = False
    scale_bias: float = 2.0
    style: str = "folk"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise SamplerError(msg)

        if not np.isfinite(self.temperature):
            bad("temperature must be a finite number (0 = greedy, 1 = as trained)")
        if self.top_k < 0:
            bad(f"top_k = {self.top_k}: use 0 (off) or a positive count")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p = {self.top_p}: use a value in (0, 1]; 1 turns it off")
        if not self.repetition_penalty > 0:
            bad(f"repetition_penalty = {self.repetition_penalty}: use a value > 0; 1 is off")
        if self.repetition_window < 0:
            bad("repetition_window must be >= 0")
        if not (tk.LOWEST_PITCH <= self.register_low <= self.register_high <= tk.HIGHEST_PITCH):
            bad(
                f"register {self.register_low}..{self.register_high} is not a range inside "
                f"{tk.LOWEST_PITCH}..{tk.HIGHEST_PITCH}: set register_low <= register_high"
            )
        if self.register_follow < 0:
            bad("register_follow must be >= 0 (0 = off)")
        if self.max_polyphony < 0 or self.max_note_ticks < 0:
            bad("max_polyphony and max_note_ticks must be >= 0 (0 = no limit)")
        if self.key.strip().lower() != "auto":
            parse_key(self.key)

    @classmethod
    def from_preset(cls, preset: object) -> Constraints:
        """Constraints from anything with preset-like attributes (``presets.Preset``).

        Every preset value is checked by the knob registry first, so a preset the sampler
        takes is one ``improv presets --check`` accepts, with the same message if not.
        """
        names = [f.name for f in fields(cls) if f.name in knobs.FIELDS] + ["max_note_beats"]
        kw = {}
        for name in names:
            if hasattr(preset, name):
                try:
                    kw[name] = knobs.check(name, getattr(preset, name))
                except knobs.KnobError as e:
                    raise SamplerError(str(e)) from None
        beats = kw.pop("max_note_beats", None)
        if beats is not None:
            kw["max_note_ticks"] = max(1, round(beats * tk.TICKS_PER_QUARTER))
        return cls(**kw)


_V = tk.VOCAB_SIZE
_ON = slice(tk.NOTE_ON_BASE, tk.NOTE_OFF_BASE)
_OFF = slice(tk.NOTE_OFF_BASE, tk.VELOCITY_BASE)
_TS = slice(tk.TIME_SHIFT_BASE, tk.NOTE_ON_BASE)
_VEL = slice(tk.VELOCITY_BASE, tk.VOCAB_SIZE)
_PITCHES = np.arange(tk.LOWEST_PITCH, tk.HIGHEST_PITCH + 1)
_POSINF = 1e4  # what a +inf logit becomes: dominant but still finite
# Below this temperature sampling is greedy: the softmax is one-hot to within exp(-1000 * gap)
# already, and dividing by a smaller one overflows.
GREEDY_BELOW = 1e-3


@dataclass(frozen=True)
class SamplerState:
    """A checkpoint of :class:`Sampler` (its own copies: restoring twice is safe)."""

    grid: BarGrid
    machine: dict[int, int]
    human: set[int]
    velocity_bin: int
    velocity_pending: bool
    recent: tuple[int, ...]
    human_pitches: tuple[int, ...]
    motifs: MotifMemory


class Sampler:
    """Draws the machine's next token from logits under grammar and constraints."""

    def __init__(
        self,
        constraints: Constraints | None = None,
        seed: int | None = None,
        meter: tuple[int, int] = (4, 4),
    ):
        self.rng = np.random.default_rng(seed)
        self.constraints = constraints or Constraints()
        self._meter0 = tk.Meter(*meter)
        self.fallbacks = 0  # how often the model offered nothing allowed
        self.reset()
        self.set_constraints(self.constraints)

    # --- state -----------------------------------------------------------------------------

    def reset(self, tick: int = 0) -> None:
        """Forget the stream: a new one starts at ``tick``, where a BAR is due."""
        self.grid = BarGrid(self._meter0, tick, tick)
        self.machine: dict[int, int] = {}  # sounding machine pitch -> start tick
        self.human: set[int] = set()
        self.velocity_bin = -1
        self.velocity_pending = False
        self.recent: deque[int] = deque(maxlen=max(1, self.constraints.repetition_window))
        self.human_pitches: deque[int] = deque(maxlen=32)
        self.motifs = MotifMemory()
        self._key_dirty = True
        self._mask: np.ndarray | None = None

    def checkpoint(self) -> SamplerState:
        """What the stream taught the sampler so far, to return to (a barge-in's rewind)."""
        return SamplerState(self.grid.copy(), dict(self.machine), set(self.human),
                            self.velocity_bin, self.velocity_pending, tuple(self.recent),
                            tuple(self.human_pitches), self.motifs.copy())

    def restore(self, state: SamplerState) -> None:
        self.grid = state.grid.copy()
        self.machine, self.human = dict(state.machine), set(state.human)
        self.velocity_bin, self.velocity_pending = state.velocity_bin, state.velocity_pending
        self.recent = deque(state.recent, maxlen=self.recent.maxlen)
        self.human_pitches = deque(state.human_pitches, maxlen=self.human_pitches.maxlen)
        self.motifs = state.motifs.copy()
        self._key_dirty = True
        self._mask = None

    def set_constraints(self, constraints: Constraints) -> None:
        self.constraints = constraints
        if self.recent.maxlen != max(1, constraints.repetition_window):
            self.recent = deque(self.recent, maxlen=max(1, constraints.repetition_window))
        self._key_dirty = True
        self._mask = None

    @property
    def tick(self) -> int:
        return self.grid.tick

    @property
    def next_bar_line(self) -> int:
        return self.grid.next_line()

    @property
    def bar_required(self) -> bool:
        return self.grid.due

    def observe(self, tok: int, human: bool = False) -> None:
        """Track a token that entered the context; ``human`` marks the player's tokens."""
        tok = int(tok)
        self._mask = None
        self.velocity_pending = False
        if tk.is_time_shift(tok):
            self.grid.move(tk.shift_ticks(tok))
        elif tok == tk.BAR:
            self.grid.mark()
        elif tk.is_note_on(tok):
            p = tk.token_pitch(tok)
            # One sounding note per key in the stream: a press closes whoever held the key.
            self.machine.pop(p, None)
            self.human.discard(p)
            # The top line is a skyline: a note under one still sounding is not on it.
            covered = any(q > p for q in (self.human if human else self.machine))
            if human:
                self.human.add(p)
                self.human_pitches.append(p)
                self._key_dirty = True
            else:
                self.machine[p] = self.tick
                self.recent.append(tok)
            if not covered:
                self.motifs.observe(p, self.tick, human)
        elif tok == tk.TURN:
            self.motifs.turn()
        elif tk.is_note_off(tok):
            p = tk.token_pitch(tok)
            self.machine.pop(p, None)
            self.human.discard(p)
        elif tk.is_velocity(tok):
            self.velocity_bin = tok - tk.VELOCITY_BASE
            self.velocity_pending = True

    def observe_all(self, toks: Iterable[int], human: bool = False) -> None:
        for t in toks:
            self.observe(t, human)

    # --- key --------------------------------------------------------------------------------

    @property
    def key(self) -> Key | None:
        """The key in force: the preset's, the inferred one for "auto", or None."""
        if self._key_dirty:
            self._key = self._current_key()
            self._refresh_scale()
            self._key_dirty = False
        return self._key

    def _current_key(self) -> Key | None:
        text = self.constraints.key.strip().lower()
        if text == "auto":
            return infer_key(self.human_pitches) if len(self.human_pitches) >= 4 else None
        parsed = parse_key(self.constraints.key)
        return None if parsed is None else Key(parsed[0], parsed[1], 1.0)

    def register(self) -> tuple[int, int]:
        """The pitch range in force: the preset's, or the part of it around the player.

        With ``register_follow`` the answer stays near where the player plays (the median
        of their recent notes); a player outside the preset's range gets its nearest octave.
        """
        c = self.constraints
        lo, hi = c.register_low, c.register_high
        if not c.register_follow or not self.human_pitches:
            return lo, hi
        centre = int(np.median(np.fromiter(self.human_pitches, dtype=np.int64)))
        span = c.register_follow
        if min(hi, centre + span) - max(lo, centre - span) < 12:
            centre = min(max(centre, lo + 6), hi - 6)
            span = 6
        return max(lo, centre - span), min(hi, centre + span)

    def _refresh_scale(self) -> None:
        c = self.constraints
        in_scale = np.ones(tk.N_PITCHES, dtype=bool)
        if self._key is not None:
            pcs = np.zeros(12, dtype=bool)
            pcs[list(self._key.pitch_classes())] = True
            in_scale = pcs[_PITCHES % 12]
        lo, hi = self.register()
        in_range = (_PITCHES >= lo) & (_PITCHES <= hi)
        self._note_ok = in_range & (in_scale if c.scale_lock else True)
        bias = np.zeros(_V, dtype=np.float64)
        bias[_ON] += c.density
        bias[_TS] -= c.density
        if not c.scale_lock:
            bias[_ON] -= np.where(in_scale, 0.0, c.scale_bias)
        self._bias = bias
        self._mask = None

    # --- the mask ---------------------------------------------------------------------------

    def _overdue(self) -> list[int]:
        limit = self.constraints.max_note_ticks
        if not limit:
            return []
        return sorted(p for p, s in self.machine.items() if self.tick - s >= limit)

    def _note_on_mask(self) -> np.ndarray:
        ok = self._note_ok.copy()
        c = self.constraints
        if c.max_polyphony and len(self.machine) >= c.max_polyphony:
            ok[:] = False
            return ok
        held = [p - tk.LOWEST_PITCH for p in (*self.machine, *self.human)]
        ok[held] = False
        stuck = self.motifs.repeated()
        if stuck is not None:
            ok[stuck - tk.LOWEST_PITCH] = False
        return ok

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens the machine may emit now."""
        if self._mask is None or self._key_dirty:
            self.key  # noqa: B018 - refreshes the scale when the key changed
            self._mask = self._build_mask()
            self._mask.flags.writeable = False
            self._allowed_idx = np.flatnonzero(self._mask)
        return self._mask

    def _build_mask(self) -> np.ndarray:
        m = np.zeros(_V, dtype=bool)
        if self.bar_required:
            m[tk.BAR] = True
            return m
        overdue = self._overdue()
        if overdue:
            m[[tk.note_off_token(p) for p in overdue]] = True
            return m
        free = self._note_on_mask()
        # As the encoder: the first NOTE_ON of a stream follows a VELOCITY.
        on = free if self.velocity_bin >= 0 else np.zeros_like(free)
        if self.velocity_pending:
            if not on.any():  # cannot happen through sample(); relax to the grammar alone
                on = np.ones(tk.N_PITCHES, dtype=bool)
                on[[p - tk.LOWEST_PITCH for p in (*self.machine, *self.human)]] = False
            m[_ON] = on
            if on.any():
                return m
        m[_ON] = on
        if free.any():
            m[_VEL] = True
            if self.velocity_bin >= 0:
                m[tk.VELOCITY_BASE + self.velocity_bin] = False
        if self.machine:
            m[[tk.note_off_token(p) for p in self.machine]] = True
        room = min(self.next_bar_line - self.tick, tk.MAX_SHIFT)
        limit = self.constraints.max_note_ticks
        if limit and self.machine:
            room = min(room, min(self.machine.values()) + limit - self.tick)
        m[tk.TIME_SHIFT_BASE : tk.TIME_SHIFT_BASE + max(room, 1)] = True
        # TURN is the session's to place, never the sampler's: it stays masked.
        return m

    def _fallback(self, idx: np.ndarray) -> int:
        """A safe allowed token when the model offers nothing allowed."""
        self.fallbacks += 1
        m = self._mask
        if m[tk.BAR]:
            return tk.BAR
        if self.velocity_pending and m[_ON].any():
            return tk.NOTE_ON_BASE + int(np.flatnonzero(m[_ON])[0])
        if m[_OFF].any():  # ending a sounding note is always harmless
            return tk.NOTE_OFF_BASE + int(np.flatnonzero(m[_OFF])[0])
        if m[_TS].any():
            return tk.TIME_SHIFT_BASE + int(np.flatnonzero(m[_TS])[-1])
        return int(idx[0])

    # --- drawing ----------------------------------------------------------------------------

    def sample(self, logits: Sequence[float] | np.ndarray) -> int:
        """The next machine token. Does not observe it: call ``observe`` when it is used."""
        x = np.asarray(logits, dtype=np.float64).reshape(-1)
        if x.shape[0] != _V:
            raise SamplerError(f"logits have {x.shape[0]} entries, the vocabulary has {_V}")
        self.allowed()
        idx = self._allowed_idx
        c = self.constraints
        if c.repetition_penalty != 1.0 and self.recent:
            x = x.copy()
            rep = np.unique(np.fromiter(self.recent, dtype=np.int64))
            v = x[rep]
            x[rep] = np.where(v > 0, v / c.repetition_penalty, v * c.repetition_penalty)
        if c.echo > 0:
            w = self.motifs.bias()
            if w is not None:
                x = x.copy()  # never the caller's array
                x[_ON] = _reweigh(x[_ON], c.echo * w, self._mask[_ON])
        z = x[idx]
        z = np.nan_to_num(z, nan=-np.inf, posinf=_POSINF, neginf=-np.inf) + self._bias[idx]
        top = z.max()
        if not np.isfinite(top):
            return self._fallback(idx)
        if c.temperature < GREEDY_BELOW:
            return int(idx[int(np.argmax(z))])
        z = (z - top) / c.temperature
        if 0 < c.top_k < z.shape[0]:
            kth = np.partition(z, -c.top_k)[-c.top_k]
            z[z < kth] = -np.inf
        p = np.exp(z)
        if c.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            keep = int(np.searchsorted(cum, c.top_p * cum[-1])) + 1
            p[order[keep:]] = 0.0
        cum = np.cumsum(p)
        j = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
        if j >= p.shape[0] or p[j] == 0.0:  # rounding at the top end
            j = int(np.argmax(p))
        return int(idx[j])


def _reweigh(on: np.ndarray, boost: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``on + boost``, shifted so the allowed NOTE_ONs keep their total probability.

    Echo chooses which note comes, not whether one comes: a plain boost would also make
    every note-on likelier than waiting, and the answers denser than the call.
    """
    ok = allowed & np.isfinite(on)
    if not ok.any():
        return on
    top = on[ok].max()
    before = np.log(np.exp(on[ok] - top).sum())
    out = on + boost
    after = np.log(np.exp(out[ok] - top).sum())
    return out - (after - before)
