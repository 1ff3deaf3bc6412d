"""The event vocabulary: one language for the keyboard, the model and the synth.

This module owns the token ids, the streaming encoder (live MIDI events in,
tokens out, the moment each event happens) and the streaming decoder (tokens
in, timed note events out). The file-level encoder is the streaming encoder fed
from a list, so training data and live input can never disagree.

Time is musical: ticks at 24 per quarter note, the MIDI beat-clock resolution.
Nothing here knows about seconds; ``clock`` converts.

Vocabulary (ids in this order; ``VOCAB_SIZE`` = 307):

==============  =====  ===========================================================
token           count  meaning
==============  =====  ===========================================================
PAD             1      padding, never generated
TURN            1      phrase marker: one player hands over to the other
BAR             1      a bar line at the current tick (emitted before its events)
STYLE_k         16     style of what follows: 5 corpus styles, 11 user slots
TIME_SHIFT_n    96     advance n ticks, n = 1..96 (one 4/4 bar); longer by repeats
NOTE_ON_p       88     key p = 21..108 starts at the current velocity
NOTE_OFF_p      88     key p = 21..108 stops
VELOCITY_b      16     velocity bin b = 0..15 for the following NOTE_ONs
==============  =====  ===========================================================

Rules the encoder keeps (and the decoder tolerates being broken):

* It is causal: a NOTE_ON is emitted at its onset without its duration.
* A time shift never crosses a bar line: it stops at the line, BAR is emitted,
  and the rest follows. So the model always knows its metric position.
* Within one tick the order is the order events arrive; the file encoder feeds
  note-offs before note-ons, then by pitch, so a file encodes one way only.
* VELOCITY is emitted only when the bin changes.
* Pitches outside the piano range are folded by octaves into it and counted.
* A NOTE_ON for a key that is already sounding first closes it (NOTE_OFF), so
  there is never more than one sounding note per key.

Worked example, 4/4, style ``folk``: a C4 quarter note at velocity 80, then E4
and G4 together for an eighth at velocity 100, then a rest to the next bar::

    tick  0   note_on  60 v80    ->  STYLE_folk BAR VELOCITY_9 NOTE_ON_60
    tick 24   note_off 60        ->  TIME_SHIFT_24 NOTE_OFF_60
    tick 24   note_on  64 v100   ->  VELOCITY_12 NOTE_ON_64
    tick 24   note_on  67 v100   ->  NOTE_ON_67
    tick 36   note_off 64, 67    ->  TIME_SHIFT_12 NOTE_OFF_64 NOTE_OFF_67
    tick 96   (bar line)         ->  TIME_SHIFT_60 BAR

The decoder turns the same tokens back into the same events, with velocities at
the centre of their bins, and closes whatever is still sounding when asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from improv.core.grid import TICKS_PER_QUARTER as TICKS_PER_QUARTER
from improv.core.grid import BarGrid, Meter

CORPUS_STYLES: tuple[str, ...] = ("chorale", "renaissance", "celtic", "folk", "classical")
N_STYLES = 16
MAX_SHIFT = 96
LOWEST_PITCH = 21
HIGHEST_PITCH = 108
N_PITCHES = HIGHEST_PITCH - LOWEST_PITCH + 1
N_VELOCITY_BINS = 16

PAD = 0
TURN = 1
BAR = 2
STYLE_BASE = 3
TIME_SHIFT_BASE = STYLE_BASE + N_STYLES  # TIME_SHIFT_n has id TIME_SHIFT_BASE + n - 1
NOTE_ON_BASE = TIME_SHIFT_BASE + MAX_SHIFT
NOTE_OFF_BASE = NOTE_ON_BASE + N_PITCHES
VELOCITY_BASE = NOTE_OFF_BASE + N_PITCHES
VOCAB_SIZE = VELOCITY_BASE + N_VELOCITY_BINS


# --- single-token helpers ----------------------------------------------------------------


def style_token(index: int) -> int:
    if not 0 <= index < N_STYLES:
        raise ValueError(f"style index {index} out of range 0..{N_STYLES - 1}")
    return STYLE_BASE + index


def time_shift_token(ticks: int) -> int:
    if not 1 <= ticks <= MAX_SHIFT:
        raise ValueError(f"time shift {ticks} out of range 1..{MAX_SHIFT}")
    return TIME_SHIFT_BASE + ticks - 1


def note_on_token(pitch: int) -> int:
    return NOTE_ON_BASE + fold_pitch(pitch) - LOWEST_PITCH


def note_off_token(pitch: int) -> int:
    return NOTE_OFF_BASE + fold_pitch(pitch) - LOWEST_PITCH


def velocity_token(bin_: int) -> int:
    return VELOCITY_BASE + bin_


def is_style(tok: int) -> bool:
    return STYLE_BASE <= tok < TIME_SHIFT_BASE


def is_time_shift(tok: int) -> bool:
    return TIME_SHIFT_BASE <= tok < NOTE_ON_BASE


def is_note_on(tok: int) -> bool:
    return NOTE_ON_BASE <= tok < NOTE_OFF_BASE


def is_note_off(tok: int) -> bool:
    return NOTE_OFF_BASE <= tok < VELOCITY_BASE


def is_velocity(tok: int) -> bool:
    return VELOCITY_BASE <= tok < VOCAB_SIZE


def shift_ticks(tok: int) -> int:
    return tok - TIME_SHIFT_BASE + 1


def token_pitch(tok: int) -> int:
    """Pitch of a NOTE_ON or NOTE_OFF token."""
    if is_note_on(tok):
        return tok - NOTE_ON_BASE + LOWEST_PITCH
    if is_note_off(tok):
        return tok - NOTE_OFF_BASE + LOWEST_PITCH
    raise ValueError(f"token {tok} is not a note token")


def fold_pitch(pitch: int) -> int:
    """Fold a MIDI pitch by octaves into the piano range 21..108."""
    while pitch < LOWEST_PITCH:
        pitch += 12
    while pitch > HIGHEST_PITCH:
        pitch -= 12
    return pitch


def velocity_bin(velocity: int) -> int:
    """Bin of a MIDI velocity 1..127 (0 is a note-off and has no bin)."""
    v = min(max(int(velocity), 1), 127)
    return (v - 1) * N_VELOCITY_BINS // 127


def bin_velocity(bin_: int) -> int:
    """Velocity at the centre of a bin; ``velocity_bin(bin_velocity(b)) == b``."""
    lo = -(-bin_ * 127 // N_VELOCITY_BINS) + 1
    hi = -(-(bin_ + 1) * 127 // N_VELOCITY_BINS)
    return (lo + hi) // 2


def token_name(tok: int) -> str:
    if tok == PAD:
        return "PAD"
    if tok == TURN:
        return "TURN"
    if tok == BAR:
        return "BAR"
    if is_style(tok):
        i = tok - STYLE_BASE
        name = CORPUS_STYLES[i] if i < len(CORPUS_STYLES) else f"user{i - len(CORPUS_STYLES)}"
        return f"STYLE_{name}"
    if is_time_shift(tok):
        return f"TIME_SHIFT_{shift_ticks(tok)}"
    if is_note_on(tok):
        return f"NOTE_ON_{token_pitch(tok)}"
    if is_note_off(tok):
        return f"NOTE_OFF_{token_pitch(tok)}"
    if is_velocity(tok):
        return f"VELOCITY_{tok - VELOCITY_BASE}"
    raise ValueError(f"token {tok} is outside the vocabulary (size {VOCAB_SIZE})")


def vocabulary() -> list[str]:
    """Names of every token, indexed by id (written beside a model as JSON)."""
    return [token_name(t) for t in range(VOCAB_SIZE)]


# --- events and notes --------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Event:
    """A note event at a tick; ``velocity == 0`` is a note-off, as in MIDI."""

    tick: int
    pitch: int
    velocity: int

    @property
    def is_note_on(self) -> bool:
        return self.velocity > 0


@dataclass(frozen=True, order=True)
class Note:
    """A note with onset ``start`` and offset ``end`` in ticks (end > start)."""

    start: int
    end: int
    pitch: int
    velocity: int


def sort_key(ev: Event) -> tuple[int, int, int]:
    """Canonical order within a file: by tick, note-offs first, then by pitch."""
    return (ev.tick, 1 if ev.velocity > 0 else 0, ev.pitch)


def notes_to_events(notes: Iterable[Note]) -> list[Event]:
    events = []
    for n in notes:
        events.append(Event(n.start, n.pitch, max(1, n.velocity)))
        events.append(Event(n.end, n.pitch, 0))
    events.sort(key=sort_key)
    return events


def events_to_notes(events: Iterable[Event]) -> list[Note]:
    """Pair note-ons with their note-offs; a repeated note-on closes the previous note."""
    open_: dict[int, tuple[int, int]] = {}
    notes = []
    for ev in events:
        if ev.velocity > 0:
            if ev.pitch in open_:
                start, vel = open_.pop(ev.pitch)
                notes.append(Note(start, ev.tick, ev.pitch, vel))
            open_[ev.pitch] = (ev.tick, ev.velocity)
        elif ev.pitch in open_:
            start, vel = open_.pop(ev.pitch)
            notes.append(Note(start, ev.tick, ev.pitch, vel))
    notes.sort()
    return notes


# --- the stream state shared by encoder and decoder ---------------------------------------


@dataclass
class EncoderStats:
    events: int = 0
    tokens: int = 0
    folded: int = 0
    retriggered: int = 0
    dropped_offs: int = 0


class StreamEncoder:
    """Turns live note events into tokens as they happen.

    Feed events in time order; each call returns the tokens for that event at
    once. Tokens produced elsewhere (the model's own notes) are passed through
    :meth:`observe` so that the encoder's idea of time, velocity and sounding
    keys stays the same as the context's. Bar lines come from its :class:`BarGrid`.
    """

    def __init__(self, meter: Meter | None = None, tick: int = 0,
                 bar_start: int | None = None) -> None:
        self.grid = BarGrid(meter or Meter(), tick, tick if bar_start is None else bar_start)
        self.velocity_bin = -1
        self.sounding: set[int] = set()
        self.stats = EncoderStats()

    @property
    def tick(self) -> int:
        return self.grid.tick

    @property
    def meter(self) -> Meter:
        return self.grid.meter

    def copy(self) -> StreamEncoder:
        """An independent copy (a checkpoint of the stream)."""
        new = StreamEncoder.__new__(StreamEncoder)
        new.grid = self.grid.copy()
        new.velocity_bin = self.velocity_bin
        new.sounding = set(self.sounding)
        new.stats = EncoderStats(**vars(self.stats))
        return new

    def start(self, style: int | None = None) -> list[int]:
        """Tokens that open a stream: the style, then the first bar line."""
        out = [style_token(style)] if style is not None else []
        out += self.advance(self.tick)
        self.stats.tokens += len(out)
        return out

    def set_meter(self, tick: int, numerator: int, denominator: int) -> None:
        """A new meter whose first bar line is at ``tick`` (>= the current tick)."""
        self.grid.set_meter(tick, numerator, denominator)

    def _bar(self) -> list[int]:
        """BAR if the current tick is a bar line not marked yet."""
        if self.grid.arrive():
            self.grid.marked = True
            return [BAR]
        return []

    def advance(self, tick: int) -> list[int]:
        """Time shifts (and bar lines) from the current tick up to ``tick``."""
        out = self._bar()
        while self.grid.tick < tick:
            step = min(tick, self.grid.next_line(), self.grid.tick + MAX_SHIFT) - self.grid.tick
            out.append(time_shift_token(step))
            self.grid.move(step)
            out += self._bar()
        return out

    def note_on(self, tick: int, pitch: int, velocity: int) -> list[int]:
        if velocity <= 0:
            return self.note_off(tick, pitch)
        out = self.advance(tick)
        p = fold_pitch(pitch)
        if p != pitch:
            self.stats.folded += 1
        if p in self.sounding:
            self.stats.retriggered += 1
            out.append(note_off_token(p))
            self.sounding.discard(p)
        b = velocity_bin(velocity)
        if b != self.velocity_bin:
            out.append(velocity_token(b))
            self.velocity_bin = b
        out.append(note_on_token(p))
        self.sounding.add(p)
        self.stats.events += 1
        self.stats.tokens += len(out)
        return out

    def note_off(self, tick: int, pitch: int) -> list[int]:
        out = self.advance(tick)
        p = fold_pitch(pitch)
        if p in self.sounding:
            out.append(note_off_token(p))
            self.sounding.discard(p)
        else:
            self.stats.dropped_offs += 1
        self.stats.events += 1
        self.stats.tokens += len(out)
        return out

    def event(self, ev: Event) -> list[int]:
        if ev.velocity > 0:
            return self.note_on(ev.tick, ev.pitch, ev.velocity)
        return self.note_off(ev.tick, ev.pitch)

    def turn(self, tick: int | None = None) -> list[int]:
        """The phrase marker, after advancing to ``tick`` if given."""
        out = self.advance(tick) if tick is not None else []
        out.append(TURN)
        self.stats.tokens += len(out)
        return out

    def close(self, tick: int) -> list[int]:
        """Note-offs at ``tick`` for every key still sounding, lowest first."""
        out = self.advance(tick)
        for p in sorted(self.sounding):
            out.append(note_off_token(p))
        self.sounding.clear()
        self.stats.tokens += len(out)
        return out

    def observe(self, tok: int) -> None:
        """Keep state in step with a token that entered the context from elsewhere."""
        if is_time_shift(tok):
            self.grid.move(shift_ticks(tok))  # foreign shifts may cross a line without a BAR
        elif tok == BAR:
            # The grid comes from the meter, not from the model: an off-grid BAR
            # (which the sampler forbids anyway) does not move the bar lines.
            self.grid.mark()
        elif is_note_on(tok):
            self.sounding.add(token_pitch(tok))
        elif is_note_off(tok):
            self.sounding.discard(token_pitch(tok))
        elif is_velocity(tok):
            self.velocity_bin = tok - VELOCITY_BASE


@dataclass
class StreamDecoder:
    """Turns tokens back into timed note events, one token at a time.

    It accepts any token sequence: a NOTE_OFF for a silent key is ignored, a
    NOTE_ON for a sounding key closes it first, and :meth:`close` ends every
    note still sounding. So whatever a model emits, every note-on it yields has
    exactly one note-off after it.
    """

    tick: int = 0
    velocity: int = bin_velocity(N_VELOCITY_BINS // 2)
    sounding: set[int] = field(default_factory=set)
    bars: int = 0

    def feed(self, tok: int) -> list[Event]:
        if is_time_shift(tok):
            self.tick += shift_ticks(tok)
        elif is_velocity(tok):
            self.velocity = bin_velocity(tok - VELOCITY_BASE)
        elif is_note_on(tok):
            p = token_pitch(tok)
            out = []
            if p in self.sounding:
                out.append(Event(self.tick, p, 0))
            self.sounding.add(p)
            out.append(Event(self.tick, p, self.velocity))
            return out
        elif is_note_off(tok):
            p = token_pitch(tok)
            if p in self.sounding:
                self.sounding.discard(p)
                return [Event(self.tick, p, 0)]
        elif tok == BAR:
            self.bars += 1
        return []

    def feed_all(self, tokens: Iterable[int]) -> Iterator[Event]:
        for t in tokens:
            yield from self.feed(int(t))

    def close(self) -> list[Event]:
        out = [Event(self.tick, p, 0) for p in sorted(self.sounding)]
        self.sounding.clear()
        return out


# --- whole sequences ---------------------------------------------------------------------


def encode_events(
    events: Iterable[Event],
    style: int | None = None,
    meters: Iterable[tuple[int, int, int]] = (),
    end_tick: int | None = None,
    turns: Iterable[int] = (),
) -> list[int]:
    """Tokens for a whole event list, through the streaming encoder.

    ``meters`` holds ``(tick, numerator, denominator)``; ``end_tick`` (if given)
    closes sounding notes there and pads the stream to that tick. ``turns``
    holds ticks where a TURN marker goes, after the note-offs of that tick
    and before its note-ons (as live: the player's last note ends, then the
    other player answers).
    """
    meters = sorted(meters)
    first = None
    if meters and meters[0][0] == 0:
        first = Meter(max(1, meters[0][1]), max(1, meters[0][2]))
        first = first if first.bar_ticks >= 1 else Meter()
        meters = meters[1:]
    enc = StreamEncoder(first)
    for tick, num, den in meters:
        enc.set_meter(tick, num, den)
    out = enc.start(style)
    pending_turns = sorted(turns, reverse=True)
    for ev in sorted(events, key=sort_key):
        # A turn at tick t follows t's note-offs (the player's last note ends) but
        # precedes t's note-ons, which belong to the one who answers.
        while pending_turns and (
            pending_turns[-1] < ev.tick or (pending_turns[-1] == ev.tick and ev.velocity > 0)
        ):
            out += enc.turn(max(pending_turns.pop(), enc.tick))
        out += enc.event(ev)
    while pending_turns:
        out += enc.turn(max(pending_turns.pop(), enc.tick))
    if end_tick is not None:
        out += enc.close(max(end_tick, enc.tick))
    return out


def encode_notes(
    notes: Iterable[Note], style: int | None = None, meters: Iterable[tuple[int, int, int]] = ()
) -> list[int]:
    return encode_events(notes_to_events(notes), style=style, meters=meters)


def decode_tokens(tokens: Iterable[int]) -> list[Event]:
    """Events for a token sequence, every opened note closed at the end."""
    dec = StreamDecoder()
    out = list(dec.feed_all(tokens))
    out += dec.close()
    return out


def decode_notes(tokens: Iterable[int]) -> list[Note]:
    return events_to_notes(decode_tokens(tokens))
