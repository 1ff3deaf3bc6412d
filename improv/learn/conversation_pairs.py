"""Held-out material for ``improv eval --conversation``: calls with their true answers, and
stretches where the player plays on.

This module owns what is taken from the validation split and how:

* pairs (:func:`choose_pairs`): at each TURN of a val piece (the corpus marks phrase ends
  there, see :mod:`improv.learn.pieces`), the call is the notes that start within the 4 bars
  before the TURN's bar line, from the bar line at or before its first note (``origin``);
  its length in bars runs up to the bar line at or after its last note-off, the hand-over
  line. The truth is what the piece plays from the TURN to that many bars after the
  hand-over line. Pairs whose bars are not all one length are skipped (a meter change or a
  pickup bar inside), as are calls of fewer than 4 notes and truths that run past the end.
* windows (:func:`choose_windows`): 8 whole bars of one length played straight through,
  TURNs ignored, for counting false hand-overs.

Everything is in the piece's absolute ticks, bar lines read from its BAR tokens. A bar of
n quarters runs on an n/4 clock (6/8 as 3/4, its beat a quarter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from improv.core import tokens as tk

CALL_BARS = 4  # a call is at most this many bars before its TURN
MIN_CALL_NOTES = 4
WINDOW_BARS = 8  # the false hand-over windows: the player plays on through this many bars


# --- pairs from the val split ----------------------------------------------------------------


@dataclass
class Timeline:
    """One piece decoded: its notes, bar lines and TURN ticks (absolute ticks)."""

    notes: list[tk.Note]
    bars: list[int]
    turns: list[int]


def timeline(tokens: Sequence[int]) -> Timeline:
    dec, events, bars, turns = tk.StreamDecoder(), [], [], []
    for tok in map(int, tokens):
        if tok == tk.BAR and (not bars or bars[-1] != dec.tick):
            bars.append(dec.tick)
        elif tok == tk.TURN:
            turns.append(dec.tick)
        events += dec.feed(tok)
    events += dec.close()
    return Timeline(tk.events_to_notes(events), bars, turns)


@dataclass
class Pair:
    """A held-out call and the composer's own continuation, in the piece's ticks."""

    piece: str
    style: str
    turn: int  # tick of the TURN
    origin: int  # bar line at or before the call's first note
    handover: int  # bar line at or after the call's last note-off: the answer's line
    bars: int  # the call's length in bars (origin .. handover)
    bar_ticks: int
    call: list[tk.Note]
    truth: list[tk.Note]  # from the TURN to ``bars`` bars after the hand-over line

    @property
    def call_end(self) -> int:
        return max(n.end for n in self.call)

    @property
    def meter(self) -> tuple[int, int]:
        return meter_for(self.bar_ticks)


def meter_for(bar_ticks: int) -> tuple[int, int]:
    """The clock's meter for a bar length: n/4 where a bar is whole quarters (6/8 as 3/4)."""
    for den, unit in ((4, 24), (8, 12), (16, 6)):
        if bar_ticks % unit == 0:
            return bar_ticks // unit, den
    raise ValueError(f"a bar of {bar_ticks} ticks has no meter on the clock")


def _uniform(lines: Sequence[int]) -> int | None:
    steps = set(np.diff(lines).tolist())
    return steps.pop() if len(steps) == 1 else None


def pairs_of_piece(toks: Sequence[int], name: str, style: str, *, call_bars: int = CALL_BARS,
                   min_notes: int = MIN_CALL_NOTES) -> tuple[list[Pair], dict[str, int]]:
    """Every usable pair of one piece, and how many TURNs were skipped for what."""
    tl, pairs = timeline(toks), []
    skipped = {"few_notes": 0, "meter": 0, "piece_end": 0}
    bars = tl.bars
    for t in tl.turns:
        k = next((i for i, b in enumerate(bars) if b >= t), None)
        if k is None:
            skipped["piece_end"] += 1
            continue
        lo = bars[max(0, k - call_bars)]
        call = [n for n in tl.notes if lo <= n.start < t]
        if len(call) < min_notes:
            skipped["few_notes"] += 1
            continue
        first, end = call[0].start, max(n.end for n in call)
        o = max(i for i, b in enumerate(bars) if b <= first)
        h = next((i for i, b in enumerate(bars) if b >= end), None)
        if h is None or h + (h - o) >= len(bars):
            skipped["piece_end"] += 1
            continue
        n_bars, stop = h - o, bars[h + (h - o)]
        bar_ticks = _uniform(bars[o : h + n_bars + 1])
        if bar_ticks is None or bar_ticks % 6:
            skipped["meter"] += 1
            continue
        truth = [tk.Note(n.start, min(n.end, stop), n.pitch, n.velocity)
                 for n in tl.notes if t <= n.start < stop]
        pairs.append(Pair(name, style, t, bars[o], bars[h], n_bars, bar_ticks, call, truth))
    return pairs, skipped


def choose_pairs(pieces: Sequence[Sequence[int]], names: Sequence[str], labels: Sequence[str],
                 per_style: int, seed: int = 0) -> tuple[list[Pair], dict]:
    """Up to ``per_style`` pairs of each style, seeded; one pair from each piece in turn (in a
    shuffled order) so that no long piece fills a style, and the styles interleaved."""
    rng = np.random.default_rng(seed)
    by_style: dict[str, list[list[Pair]]] = {}
    skipped: dict[str, int] = {}
    for i in rng.permutation(len(pieces)):
        ps, sk = pairs_of_piece(pieces[i], names[i], labels[i])
        for k, v in sk.items():
            skipped[k] = skipped.get(k, 0) + v
        if ps:
            by_style.setdefault(labels[i], []).append([ps[j] for j in rng.permutation(len(ps))])
    chosen: dict[str, list[Pair]] = {}
    for style, queues in by_style.items():
        got = chosen.setdefault(style, [])
        while len(got) < per_style and any(queues):
            for q in queues:
                if q and len(got) < per_style:
                    got.append(q.pop())
    order = sorted(chosen)
    out = [chosen[s][r] for r in range(per_style) for s in order if r < len(chosen[s])]
    info = {"skipped_turns": skipped, "per_style": {s: len(chosen[s]) for s in order}}
    return out, info


# --- stretches where the player plays on ------------------------------------------------


@dataclass
class Window:
    piece: str
    style: str
    origin: int
    bar_ticks: int
    notes: list[tk.Note]

    @property
    def meter(self) -> tuple[int, int]:
        return meter_for(self.bar_ticks)


def windows_of_piece(toks: Sequence[int], name: str, style: str,
                     bars: int = WINDOW_BARS) -> list[Window]:
    """Stretches of ``bars`` whole bars of one length, with notes in the first and last bar."""
    tl, out = timeline(toks), []
    for i in range(0, len(tl.bars) - bars):
        lines = tl.bars[i : i + bars + 1]
        bt = _uniform(lines)
        if bt is None or bt % 6:
            continue
        notes = [tk.Note(n.start, min(n.end, lines[-1]), n.pitch, n.velocity)
                 for n in tl.notes if lines[0] <= n.start < lines[-1]]
        if notes and notes[0].start < lines[1] and notes[-1].start >= lines[-2]:
            out.append(Window(name, style, lines[0], bt, notes))
    return out


def choose_windows(pieces, names, labels, n: int, seed: int = 0) -> list[Window]:
    """Up to ``n`` windows, one a piece, round-robin over styles, seeded."""
    rng = np.random.default_rng(seed + 1)
    by_style: dict[str, list[Window]] = {}
    for i in rng.permutation(len(pieces)):
        ws = windows_of_piece(pieces[i], names[i], labels[i])
        if ws:
            by_style.setdefault(labels[i], []).append(ws[int(rng.integers(len(ws)))])
    queues, out = [by_style[s] for s in sorted(by_style)], []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


