"""The stage UI's scrolling piano roll: pitch rows by time columns, human and machine notes.

``render_roll`` is a pure function from a snapshot's notes and clock to rich ``Text`` (so it is
tested without a terminal); ``PianoRoll`` is the Textual widget that calls it with the styles from
``tui.tcss`` (component classes ``roll--human`` and friends). The playhead ("now", marked ▼ on
the ruler) stands a bar from the right edge: the machine's notes reach the snapshot as they are
generated, a lookahead before they sound, and the planned ones are drawn there (□┄) before they
move under the playhead and sound (■━); the answer's whole span is marked on the ruler. The roll
shows as many beats as fit (two columns a beat when compact, four when wide). Its pitch range
follows the notes on screen: a narrow phrase is drawn two or three lines a semitone, so the roll
is filled, not half empty; a wide one folds several semitones into a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from improv.live.session_api import NoteView, Snapshot

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
LABEL_W = 4  # "C#-1" is the widest label

# cell flags
HUMAN, HUMAN_ON, MACHINE, MACHINE_ON, PLANNED = 1, 2, 4, 8, 16

STYLE_NAMES = ("human", "machine", "both", "bar", "beat", "label", "ruler", "planned",
               "playhead", "answer")
MARGIN = 2  # semitones kept free above and below the notes
MIN_SPAN = 12  # a zoomed roll shows at least an octave
MAX_ZOOM = 3  # lines a semitone, at most


def note_name(pitch: int) -> str:
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"  # MIDI 60 = C4


@dataclass(frozen=True)
class Window:
    """The pitch rows on screen: ``rows`` rows from ``lo`` up, ``fold`` semitones a row, each
    row drawn ``zoom`` lines high (row 0 is the top one)."""

    lo: int
    rows: int
    fold: int = 1
    zoom: int = 1

    @property
    def hi(self) -> int:  # exclusive
        return self.lo + self.rows * self.fold

    def row_of(self, pitch: int) -> int | None:
        if not self.lo <= pitch < self.hi:
            return None
        return self.rows - 1 - (pitch - self.lo) // self.fold  # top row = highest pitch


def fit_window(pitches: list[int], rows: int, prev: Window | None = None) -> Window:
    """A window for these pitches in ``rows`` lines; keeps ``prev`` while all still fit at the
    same scale, so the roll holds still. Few pitches in many lines: zoomed in (``zoom`` lines a
    semitone, an octave at least, a margin either side); many in few: folded."""
    rows = max(1, rows)
    if not pitches:
        if prev is not None and prev.rows * prev.zoom <= rows and \
                (prev.rows + 1) * prev.zoom > rows:
            return prev
        return Window(max(0, 60 - rows // 2), rows)
    lo, hi = min(pitches), max(pitches)
    want = max(MIN_SPAN, hi - lo + 1 + 2 * MARGIN)
    zoom = max(1, min(MAX_ZOOM, rows // want))
    pitch_rows = rows // zoom
    fold = max(1, math.ceil((hi - lo + 1) / pitch_rows))
    if prev is not None and (prev.rows, prev.fold, prev.zoom) == (pitch_rows, fold, zoom) \
            and prev.lo <= lo and hi < prev.hi:
        return prev
    span = pitch_rows * fold
    start = (lo + hi + 1) // 2 - span // 2
    start = min(max(0, start), max(0, 128 - span))
    return Window(start, pitch_rows, fold, zoom)


def cols_per_beat(width: int) -> int:
    return 4 if width - LABEL_W >= 96 else 2


def visible_notes(notes: tuple[NoteView, ...], t0: float, t1: float) -> list[NoteView]:
    """The notes that show between beats ``t0`` and ``t1`` (an open one lasts at least to now)."""
    return [n for n in notes if n.start < t1 and (n.end is None or n.end > t0)]


def ahead_cols(cols: int, cpb: int, bar_len: float) -> int:
    """Columns right of the playhead: a bar, at most a third of the roll."""
    return max(1, min(cols // 3, round(bar_len * cpb)))


def render_roll(snap: Snapshot, width: int, height: int,
                styles: dict[str, Style] | None = None,
                window: Window | None = None) -> tuple[Text, Window]:
    """The roll as ``height`` lines of ``width`` cells, and the pitch window it used.

    The top line is a ruler (bar numbers, the playhead, the answer's span and the legend); the
    rest are pitch rows.
    """
    styles = styles or {}
    width, height = max(width, LABEL_W + 4), max(height, 2)
    cols = width - LABEL_W
    cpb = cols_per_beat(width)
    now = snap.beat
    bar_len = float(snap.meter[0])  # the snapshot's beats are the meter's beats
    ahead = ahead_cols(cols, cpb, bar_len)
    here = cols - ahead  # the playhead's column
    t0 = now - here / cpb
    notes = visible_notes(snap.notes, t0, now + ahead / cpb)
    win = fit_window([n.pitch for n in notes], height - 1, window)

    grid = [[0] * cols for _ in range(win.rows)]
    for n in notes:
        row = win.row_of(n.pitch)
        if row is None:
            continue
        if n.end is not None:
            end = n.end
        else:  # sounding to now; planned and not ended yet: its first cell
            end = max(now, n.start + 1 / cpb)
        first = math.floor((n.start - t0) * cpb)
        last = max(first, math.ceil((end - t0) * cpb) - 1)
        on, hold = (HUMAN_ON, HUMAN) if n.who == "human" else (MACHINE_ON, MACHINE)
        line = grid[row]
        for c in range(max(0, first), min(cols, last + 1)):
            line[c] |= (on if c == first else hold) | (PLANNED if c >= here else 0)

    # what each empty column shows: a bar line, a beat dot or nothing
    kinds: list[str] = []
    bars: list[tuple[int, int]] = []  # (column, bar number) for the ruler
    for c in range(cols):
        a, b = t0 + c / cpb, t0 + (c + 1) / cpb
        bar_i = math.ceil(a / bar_len - 1e-9)
        if bar_i * bar_len < b - 1e-9 and bar_i >= 0:
            kinds.append("bar")
            bars.append((c, bar_i + 1))
        elif math.ceil(a - 1e-9) < b - 1e-9 and a >= -1e-9:
            kinds.append("beat")
        else:
            kinds.append("")

    kinds[here] = "now"
    span = None
    if snap.answer_span is not None:
        a, b = ((x - t0) * cpb for x in snap.answer_span)
        span = (max(0, math.floor(a)), min(cols, math.ceil(b)))

    out = Text(no_wrap=True, overflow="crop", end="")
    out.append(_ruler(cols, bars, styles, here, span))
    lines = 0
    for r, line in enumerate(grid):
        top = win.lo + (win.rows - r) * win.fold - 1  # highest pitch in this row
        has_c = any(p % 12 == 0 for p in range(top - win.fold + 1, top + 1))
        c_pitch = top - (top % 12) if has_c else None
        label = note_name(c_pitch) if c_pitch is not None else ""
        if r == 0 and not label:
            label = note_name(top)
        for z in range(win.zoom):
            out.append("\n")
            out.append(f"{label if z == 0 else '':<{LABEL_W - 1}} "[:LABEL_W], styles.get("label"))
            _append_row(out, line, kinds, styles)
            lines += 1
    for _ in range(height - 1 - lines):  # what a zoomed window leaves: an empty row
        out.append("\n" + " " * LABEL_W)
        _append_row(out, [0] * cols, kinds, styles)
    return out, win


def _ruler(cols: int, bars: list[tuple[int, int]], styles: dict[str, Style], here: int,
           span: tuple[int, int] | None) -> Text:
    cells = [" "] * cols
    answer = set(range(*span)) if span is not None else set()
    for c in answer:
        cells[c] = "▁"
    for c, number in bars:
        label = str(number)
        free = all(ch in " ▁" for ch in cells[max(0, c - 1):c + len(label)])
        if c + len(label) <= cols and free and not c <= here < c + len(label):
            cells[c:c + len(label)] = label
    cells[here] = "▼"
    ruler = Text(" " * LABEL_W, style=styles.get("ruler"))
    for c, ch in enumerate(cells):
        name = "playhead" if c == here else "answer" if ch == "▁" else "ruler"
        ruler.append(ch, styles.get(name))
    legend = Text.assemble(("■", styles.get("human")), " you ",
                           ("■", styles.get("machine")), " machine ",
                           ("□", styles.get("planned")), " planned")
    if here < len(legend) + 24:
        legend = legend[: len(legend) - len(" □ planned")]
    if here >= len(legend) + 24:  # before the playhead, leaving room for a few bar numbers
        end = LABEL_W + here - 1
        ruler = ruler[: end - len(legend) - 1] + Text(" ") + legend + ruler[end:]
    return ruler


_CELL = {
    HUMAN: ("━", "human"), HUMAN_ON: ("■", "human"),
    MACHINE: ("━", "machine"), MACHINE_ON: ("■", "machine"),
}
_EMPTY = {"bar": ("│", "bar"), "beat": ("·", "beat"), "now": ("┃", "playhead")}


def _append_row(out: Text, line: list[int], kinds: list[str], styles: dict[str, Style]) -> None:
    run, run_style = [], None
    for flags, kind in zip(line, kinds, strict=True):
        if not flags:
            ch, name = _EMPTY.get(kind, (" ", ""))
        elif flags & (HUMAN | HUMAN_ON) and flags & (MACHINE | MACHINE_ON):
            ch, name = ("■" if flags & (HUMAN_ON | MACHINE_ON) else "━"), "both"
        elif flags & PLANNED and not flags & (HUMAN | HUMAN_ON):
            ch, name = ("□" if flags & MACHINE_ON else "┄"), "planned"
        else:
            ch, name = _CELL[HUMAN_ON if flags & HUMAN_ON else MACHINE_ON if flags & MACHINE_ON
                             else flags & ~PLANNED]
        style = styles.get(name)
        if style != run_style and run:
            out.append("".join(run), run_style)
            run = []
        run_style = style
        run.append(ch)
    if run:
        out.append("".join(run), run_style)


class PianoRoll(Widget):
    """Renders ``snapshot.notes``; bound to the app's snapshot (see ``ImprovApp.compose``).

    Line API with cached strips: the roll is the biggest thing on screen, so it is rebuilt only
    when its picture changes (a column's worth of time, a note, a resize), not on every poll.
    """

    COMPONENT_CLASSES = {f"roll--{name}" for name in STYLE_NAMES}
    snapshot: reactive[Snapshot] = reactive(Snapshot, repaint=False)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._window: Window | None = None
        self._strips: list[Strip] = []
        self._built_for: object = None

    def view_key(self, s: Snapshot) -> object:
        return (math.floor(s.beat * cols_per_beat(self.content_size.width)), s.notes, s.meter,
                s.answer_span)

    def watch_snapshot(self, old: Snapshot, new: Snapshot) -> None:
        if self.view_key(old) != self.view_key(new):
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._built_for = None  # a theme or CSS change: rebuild with the new colours

    def _build(self) -> list[Strip]:
        styles = {name: self.get_component_rich_style(f"roll--{name}", partial=True)
                  for name in STYLE_NAMES}
        size = self.content_size
        text, self._window = render_roll(self.snapshot, size.width, size.height, styles,
                                         self._window)
        base, console = self.rich_style, self.app.console
        return [Strip(line.render(console), line.cell_len).apply_style(base)
                .adjust_cell_length(size.width, base) for line in text.split("\n")]

    def render_line(self, y: int) -> Strip:
        key = (self.view_key(self.snapshot), self.content_size)
        if key != self._built_for:
            self._strips, self._built_for = self._build(), key
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.content_size.width, self.rich_style)
