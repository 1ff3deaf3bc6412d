"""Whose turn it is, big: the stage's state and its countdown to the hand-over.

``turn_view`` is a pure function from a snapshot to what the panel says (so it is tested
without a terminal): YOUR TURN, ANSWER IN, ANSWERING or COUNT-IN, the beats left to the end
of the stretch the session counts down (``Snapshot.countdown``: the count-in, a trading call,
the wait for the answer's line, the answer) and a line of detail. ``BigState`` draws it: one
bold line and a row of beat boxes when short (80x24), the word in a three-line block font and
beat blocks three lines high when it has the room (160x48), legible from a step away. Its
colour follows the turn through a CSS class (``-your-turn`` ...; ``tui.tcss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text

from improv.live.session_api import Snapshot, State
from improv.stage.widgets import SnapshotView

# A three-line block font for the words the panel says (Textual's Digits has digits only).
_FONT = {
    "A": ("┏━┓", "┣━┫", "╹ ╹"), "C": ("┏━╸", "┃  ", "┗━╸"), "D": ("┳━┓", "┃ ┃", "┻━┛"),
    "E": ("┏━╸", "┣━ ", "┗━╸"), "G": ("┏━╸", "┃╺┓", "┗━┛"), "I": ("╺┳╸", " ┃ ", "╺┻╸"),
    "N": ("┏┓╻", "┃┃┃", "╹┗┛"), "O": ("┏━┓", "┃ ┃", "┗━┛"), "R": ("┏━┓", "┣┳┛", "╹┗╸"),
    "S": ("┏━╸", "┗━┓", "╺━┛"), "T": ("╺┳╸", " ┃ ", " ╹ "), "U": ("╻ ╻", "┃ ┃", "┗━┛"),
    "W": ("╻╻╻", "┃┃┃", "┗┻┛"), "Y": ("╻ ╻", "┗┳┛", " ╹ "), "-": ("   ", "╺━╸", "   "),
    " ": ("  ", "  ", "  "),
}
MAX_BOXES = 16  # more beats than this are counted in bars, one box a bar


@dataclass(frozen=True)
class TurnView:
    """What the big state panel says."""

    turn: str  # "count-in" | "your-turn" | "answer-in" | "answering": the panel's CSS class
    label: str  # the big word(s)
    left: float | None = None  # beats to the hand-over, when it is known
    total: float | None = None  # beats the countdown spans
    detail: str = ""
    per_bar: int = 4  # beats a bar


def turn_view(s: Snapshot) -> TurnView:
    per_bar = max(1, s.meter[0])
    left = total = None
    if s.countdown is not None:
        start, end = s.countdown
        left, total = max(0.0, end - s.beat), max(0.0, end - start)
    if s.count_in_until is not None and s.beat < s.count_in_until:
        line = _bar(s.count_in_until, per_bar)
        return TurnView("count-in", "COUNT-IN", left, total,
                        f"{_left(left, per_bar)} · you play from bar {line}", per_bar)
    if s.state == State.THINKING:
        return TurnView("answer-in", "ANSWER IN", left, total,
                        f"{_left(left, per_bar)} · the answer is planned", per_bar)
    span = s.answer_span
    if s.state == State.RESPONDING or (span is not None and span[0] <= s.beat < span[1]):
        take = "play along" if s.mode == "overlap" else "play to take over"
        return TurnView("answering", "ANSWERING", left, total,
                        f"{_left(left, per_bar)} · {take}", per_bar)
    if s.state == State.LISTENING and left is not None:
        return TurnView("your-turn", "YOUR TURN", left, total,
                        f"{_left(left, per_bar)} to the hand-over", per_bar)
    if s.state == State.LISTENING:
        return TurnView("your-turn", "YOUR TURN", detail="the answer comes on the bar line "
                        "you end on", per_bar=per_bar)
    trading = s.knobs.get("call_bars") or 0
    hint = f"trading {trading:.0f}-bar phrases" if trading > 0 else "play a phrase"
    return TurnView("your-turn", "YOUR TURN", detail=hint, per_bar=per_bar)


def _bar(beat: float, per_bar: int) -> int:
    return int(beat // per_bar) + 1


def _left(left: float | None, per_bar: int) -> str:
    """``1 bar 2 beats left``: whole beats, counted up (a beat begun is a beat to play)."""
    if left is None:
        return ""
    n = math.ceil(left - 1e-6)
    bars, beats = divmod(n, per_bar)
    parts = ([f"{bars} bar{'s' * (bars != 1)}"] if bars else []) + \
        ([f"{beats} beat{'s' * (beats != 1)}"] if beats or not bars else [])
    return " ".join(parts) + " left"


def boxes(view: TurnView) -> list[bool]:
    """One box a beat (a bar, when there are many): True while still to come."""
    if view.left is None or not view.total:
        return []
    unit = 1 if view.total <= MAX_BOXES else view.per_bar
    n = max(1, round(view.total / unit))
    to_come = min(n, math.ceil(view.left / unit - 1e-6))
    return [i >= n - to_come for i in range(n)]


def big_text(word: str) -> list[str]:
    """``word`` in the three-line font (unknown letters as blanks)."""
    glyphs = [_FONT.get(ch, _FONT[" "]) for ch in word.upper()]
    return [" ".join(g[row] for g in glyphs) for row in range(3)]


class BigState(SnapshotView):
    """The turn and its countdown, as large as the panel's height allows (see ``turn.py``)."""

    COMPONENT_CLASSES = {"bigstate--box", "bigstate--done", "bigstate--detail"}

    def view_key(self, s: Snapshot) -> object:
        v = turn_view(s)
        return v.turn, v.label, v.detail, tuple(boxes(v))

    def watch_snapshot(self, old: Snapshot, new: Snapshot) -> None:
        turn = turn_view(new).turn
        for name in ("count-in", "your-turn", "answer-in", "answering"):
            self.set_class(name == turn, f"-{name}")
        super().watch_snapshot(old, new)

    def render(self) -> Text:
        v = turn_view(self.snapshot)
        box = self.get_component_rich_style("bigstate--box", partial=True)
        done = self.get_component_rich_style("bigstate--done", partial=True)
        detail = self.get_component_rich_style("bigstate--detail", partial=True)
        marks = boxes(v)
        unit = 1 if (v.total or 0) <= MAX_BOXES else v.per_bar
        if self.content_size.height >= 4:
            return self._big(v, marks, unit, box, done, detail)
        row = Text(f" {v.label} ", style="bold", no_wrap=True, overflow="ellipsis")
        for i, on in enumerate(marks):
            row.append("  " if i and unit == 1 and i % v.per_bar == 0 else " ")
            row.append("●" if on else "○", box if on else done)
        return Text("\n", no_wrap=True, overflow="ellipsis").join(
            [row, Text(f" {v.detail}", detail)])

    def _big(self, v: TurnView, marks: list[bool], unit: int, box: Style, done: Style,
             detail: Style) -> Text:
        rows = [Text(" " + line, style="bold") for line in big_text(v.label)]
        for row in rows:
            row.append("    ")
            for i, on in enumerate(marks):
                row.append("  " if i and unit == 1 and i % v.per_bar == 0 else " ")
                row.append("██" if on else "░░", box if on else done)
        out = Text("\n", no_wrap=True, overflow="crop").join(rows)
        out.append("\n")
        out.append(f" {v.detail}", detail)
        return out


__all__ = ["BigState", "TurnView", "big_text", "boxes", "turn_view"]
