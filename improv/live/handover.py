"""When the call is over: the evidence for handing over on the next bar line.

This module owns the judgement the session makes while the player is silent just
before a bar line: is the phrase over (answer on that line) or is this a breath
inside it (keep listening)? Two kinds of evidence, both from this set:

* the model's probability of TURN right after the player's last release. The
  corpus marks phrase ends with TURN after the phrase's last note-off, so this is
  the model's own reading of "a phrase ends here" given everything played;
* the call's length in bars against the lengths of this set's earlier calls
  (players trading phrases keep to a length) and, before there are any, the
  phrase lengths music is made of (2, 4, 8 bars).

The two multiply into one score; the answer is prepared when it passes
``threshold``. A wrong guess costs nothing audible as long as the player plays
on before the line: the session discards the prepared answer before any of its
notes sound. Silence detection stays as the fallback for the rest.

It also owns how long a call is in bars (:func:`call_bars`), which the answer's
length follows: up to the bar of the call's last note, never the silence wait.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from improv.core import tokens as tk

# A human release or first note a little off the line still belongs to it (ticks; a 32nd
# is 3 ticks, about 30 ms at 120 BPM).
LINE_SLACK = 4
# How long after the player lets go the hand-over is judged: a legato player's next note
# can follow its note-off by a few ms. Every ms of it is a ms late on a phrase held to the
# line, so it is short; a guess the player plays into anyway is taken back (session).
GRACE_S = 0.012  # seconds
LATE_TICKS = LINE_SLACK + 2  # a release this far past the line is too late for it
# Phrase lengths before this set has shown its own, as a prior over bars (renormalised).
BASE_LENGTHS = {1: 0.12, 2: 0.30, 3: 0.04, 4: 0.34, 5: 0.01, 6: 0.03, 7: 0.01, 8: 0.15}
REMEMBERED_CALLS = 8
WRONG_FACTOR = 0.5
DEFAULT_THRESHOLD = 0.08


def turn_probability(logits: np.ndarray) -> float:
    """The softmax probability of TURN in ``logits`` (the model's next-token scores)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    if not finite.size or not np.isfinite(x[tk.TURN]):
        return 0.0
    top = finite.max()
    return float(math.exp(x[tk.TURN] - top) / np.exp(finite - top).sum())


def call_bars(call_bar: int, last_tick: int, bar_ticks: int) -> int:
    """Bars from the call's first bar line through the bar of its last note (at least 1).

    A release up to ``LINE_SLACK`` past a bar line ends the call on that line.
    """
    span = max(0, last_tick - LINE_SLACK - call_bar)
    return max(1, -(-span // bar_ticks))


@dataclass
class Release:
    """The moment the player's keys all came up: where, when, what the model made of it."""

    tick: int  # on the grid, as fed
    at: float  # the stream tick it was played at (unquantized)
    p_turn: float  # p(TURN) right after the release's tokens
    before: tk.StreamEncoder | None  # the stream just before them (None: nothing to probe)
    pitch: int  # the key whose note-off emptied the keys
    tokens: list[int]  # the release's tokens as fed
    fed: int  # the stream's fed count once they were in

    def line_turn_p(self, stream, line: int) -> float:
        """p(TURN) had this release landed on ``line``.

        The corpus is engraved: a phrase's last note lasts to the line and TURN follows its
        note-off there, while a player lets go a little early. So the model is asked about
        the release moved onto the line (:meth:`Stream.what_if`), which leaves the stream as
        it was. Only while nothing was fed since.
        """
        if self.before is None or self.fed != stream.fed or self.tick >= line:
            return self.p_turn
        probe = self.before.copy().note_off(line, self.pitch)
        return max(turn_probability(stream.what_if(self.tokens, probe)), self.p_turn)


@dataclass
class HandoverPredictor:
    """Judges a silent bar line: phrase end or breath, from p(TURN) and call lengths."""

    threshold: float = DEFAULT_THRESHOLD
    lengths: deque[int] = field(default_factory=lambda: deque(maxlen=REMEMBERED_CALLS))
    wrong: Counter[int] = field(default_factory=Counter)  # guesses taken back, by length

    def length_prior(self, bars: int) -> float:
        """How typical a call of ``bars`` bars is, 0..1 (1 = the set's usual length)."""
        base = BASE_LENGTHS.get(bars, 0.005) / max(BASE_LENGTHS.values())
        if not self.lengths:
            return base
        seen = Counter(self.lengths)
        # Earlier calls outweigh the base prior as they accumulate; one call already counts.
        n = len(self.lengths)
        # Squared: a length the set has used once in eight calls is an exception, not a
        # rival (players trading phrases keep to theirs).
        share = (seen.get(bars, 0) / seen.most_common(1)[0][1]) ** 2
        return (n * share + base) / (n + 1) * WRONG_FACTOR ** self.wrong[bars]

    def score(self, p_turn: float, bars: int) -> float:
        return float(p_turn) * self.length_prior(bars)

    def decide(self, p_turn: float, bars: int) -> bool:
        """Whether to answer on the line that ends a call of ``bars`` bars."""
        return self.score(p_turn, bars) >= self.threshold

    def remember(self, bars: int) -> None:
        """A call of ``bars`` bars was answered (whatever ended it)."""
        self.lengths.append(int(bars))

    def forget_last(self) -> None:
        """The last call remembered did not end after all (the player went on)."""
        if self.lengths:
            self.lengths.pop()

    def taken_back(self, bars: int) -> None:
        """A guess that a call of ``bars`` bars had ended was wrong: the player went on.

        A partner who came in early learns to wait: each wrong guess halves that length's
        prior for the rest of the set, and a call that does end there wins one back.
        """
        self.wrong[int(bars)] += 1

    def confirmed(self, bars: int) -> None:
        if self.wrong[bars]:
            self.wrong[bars] -= 1


@dataclass(frozen=True)
class CallEnd:
    """Why the call ends now and, when it is known already, the answer's line and length."""

    why: str  # "trading" | "predicted" | "silence" | "max length"
    start: int | None = None
    bars: int | None = None


class Handover:
    """The session's hand-over judgement: releases, judged lines, wrong guesses.

    The session tells it what the player does (``pressed``, ``released``, ``new_call``,
    ``ended``, ``taken_back``) and asks ``judge`` each turn of its loop whether a
    predicted hand-over is due: when the keys all came up in the last half bar (beat)
    before a line, a moment after the release, no earlier than the line's last beat.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.predictor = HandoverPredictor()
        self.release: Release | None = None
        self.judged: int | None = None  # the line last judged
        self.refused: set[int] = set()  # lines this call went on through after a guess

    def pressed(self) -> None:
        self.release = None

    def released(self, tick: int, at: float, before, pitch: int, toks: list[int]) -> None:
        """Every key is up: remember the release (a new one: its line is judged afresh)."""
        stream = self.session.stream
        self.judged = None
        self.release = Release(tick, at, turn_probability(stream.logits), before, pitch,
                               toks, stream.fed)

    def new_call(self) -> None:
        self.judged = None
        self.refused.clear()

    def ended(self) -> None:
        self.release = None

    def taken_back(self, answer, played_through: bool) -> None:
        """A prepared answer was dropped: the call was not over after all."""
        self.predictor.forget_last()
        if played_through:  # not that line again in this call, nor lightly that length
            self.refused.add(answer.start_tick)
            self.predictor.taken_back(call_bars(answer.call_bar, answer.start_tick,
                                                self.session.clock.bar_ticks))
        # (A note before the line only says the phrase had more in it: the line may still
        # end it, judged again at the next release.)

    def due(self, now: float) -> CallEnd | None:
        """Whether the call ends now, and where the answer goes (the session is LISTENING)."""
        s = self.session
        p, bar = s.preset, s.clock.bar_ticks
        if p.call_bars:  # trading: the line is fixed by the call's first bar
            line = s.call_bar + p.call_bars * bar
            return CallEnd("trading", line, p.call_bars) if now >= line - self.lead_ticks() \
                else None
        if p.predict_handover:
            guess = self.judge(now)
            if guess is not None:
                return CallEnd("predicted", *guess)
        if not s.keys_down and now - s.last_human >= p.silence_beats * s.clock.beat_ticks:
            return CallEnd("silence")
        if now - s.call_start >= p.max_call_bars * bar:
            return CallEnd("max length")
        return None

    def line_after(self, tick: float) -> int:
        """The first bar line (or beat, with ``response_start = "beat"``) at or after ``tick``."""
        s = self.session
        line = s.clock.next_bar if s.preset.response_start == "bar" else s.clock.next_beat
        return line(tick - s.offset) + s.offset

    def bar_line_of(self, tick: int) -> int:
        """The bar line on or before a first note (one a hair early belongs to the line)."""
        s = self.session
        return s.clock.bar_start(tick + LINE_SLACK - s.offset) + s.offset

    def lead_ticks(self) -> float:
        """The least time between the hand-over and the answer's line (options.min_lead_ms)."""
        return self.session.clock.ticks(self.session.options.min_lead_ms / 1000.0)

    def judge(self, now: float) -> tuple[int, int] | None:
        """(line, bars) to answer on, when the phrase seems over at the line let go at."""
        s, rel = self.session, self.release
        if s.keys_down or rel is None:
            return None
        clock = s.clock
        line = self.line_after(rel.tick - LINE_SLACK)
        near = clock.bar_ticks // 2 if s.preset.response_start == "bar" else clock.beat_ticks
        if line == self.judged or line in self.refused or rel.tick < line - near \
                or s.stream.tick > line:
            return None
        if now < rel.at + clock.ticks(GRACE_S):
            return None
        if now < line - clock.beat_ticks or now > line + LATE_TICKS:
            return None
        self.judged = line
        bars = call_bars(s.call_bar, line, clock.bar_ticks)
        self.predictor.threshold = s.preset.handover_threshold
        if not self.predictor.decide(rel.line_turn_p(s.stream, line), bars):
            return None
        return line, bars
