"""The piano roll, drawn without a terminal: who played where, the playhead and the planned
answer ahead of it, a pitch range that follows the notes."""

from __future__ import annotations

from dataclasses import replace

from test_tui import fixed_snapshot

from improv.live.session_api import NoteView, Snapshot
from improv.stage.roll import Window, fit_window, note_name, render_roll


def test_roll_draws_human_and_machine_notes_where_they_are():
    snap = Snapshot(beat=8.0, notes=(NoteView("human", 60, 4.0, 5.0),
                                     NoteView("machine", 62, 6.0, None)))
    # 20 columns, 2 a beat: 14 up to the playhead (beats 1..8), then 6 ahead of it
    text, win = render_roll(snap, width=24, height=6)
    rows = text.plain.split("\n")
    assert len(rows) == 6 and all(len(r) == 24 for r in rows)
    human_row, machine_row = rows[1 + win.row_of(60)], rows[1 + win.row_of(62)]
    assert human_row[4 + 6:4 + 8] == "■━"  # beat 4 is column (4 - 1) * 2
    assert machine_row[4 + 10:4 + 15] == "■━━━┃", "a sounding note reaches the playhead"
    assert rows[0][4 + 14] == "▼" and human_row.startswith("C4")


def test_roll_draws_the_planned_answer_ahead_of_the_playhead():
    notes = (NoteView("human", 60, 2.0, 3.0), NoteView("machine", 62, 9.0, 9.5),
             NoteView("machine", 64, 10.0, None))
    snap = Snapshot(beat=8.0, notes=notes, answer_span=(8.0, 16.0))
    text, win = render_roll(snap, width=24, height=6)
    rows = text.plain.split("\n")
    assert rows[1 + win.row_of(62)][4 + 15:] == " □ · "  # beat 9 is column 16
    assert rows[1 + win.row_of(64)][4 + 18] == "□", "planned, not ended yet: its first cell"
    assert rows[0][4 + 14:] == "▼▁▁▁▁▁", "the answer's span on the ruler, from the playhead"
    # two beats on, the first planned note is under the playhead: drawn as sounding
    later, win = render_roll(replace(snap, beat=10.0), width=24, height=6)
    row = later.plain.split("\n")[1 + win.row_of(62)]
    assert row[4 + 12] == "■" and "□" not in row


def test_roll_styles_tell_who_played_and_what_is_planned():
    styles = {"human": "bold cyan", "machine": "bold magenta", "planned": "dim magenta"}
    snap = Snapshot(beat=4.0, notes=(NoteView("human", 60, 1.0, 2.0),
                                     NoteView("machine", 67, 2.0, 3.0),
                                     NoteView("machine", 65, 4.5, 5.0)))
    text, _ = render_roll(snap, 30, 8, styles)
    styled = [(text.plain[s.start:s.end], str(s.style)) for s in text.spans]
    assert ("■━", "bold cyan") in styled and ("■━", "bold magenta") in styled
    assert ("□", "dim magenta") in styled


def test_roll_zooms_in_on_a_narrow_phrase():
    snap = Snapshot(beat=8.0, notes=tuple(NoteView("human", p, 4.0 + i, 4.5 + i)
                                          for i, p in enumerate((60, 62, 64, 65))))
    text, win = render_roll(snap, 60, 40)
    assert win.zoom == 3 and win.fold == 1 and win.rows * win.zoom <= 39
    lines = text.plain.split("\n")
    assert len(lines) == 40
    drawn = [i for i, line in enumerate(lines[1:]) if "■" in line or "━" in line]
    # four notes, three lines each, and the rows they take fill the roll, not its middle third
    assert len(drawn) == 12 and drawn[-1] - drawn[0] >= 12
    assert win.lo <= 60 - 2 and win.hi >= 65 + 2


def test_roll_fits_pitches_and_holds_still():
    win = fit_window([60, 64, 67], rows=10)
    assert all(win.row_of(p) is not None for p in (60, 64, 67)) and win.fold == 1
    assert fit_window([61, 65], rows=10, prev=win) is win, "no jumping while notes fit"
    wide = fit_window([30, 90], rows=10)
    assert wide.fold == 7 and wide.row_of(30) == 9 and wide.row_of(90) == 0
    assert fit_window([], rows=12).row_of(60) is not None
    assert note_name(60) == "C4" and note_name(61) == "C#4" and note_name(0) == "C-1"
    top = fit_window([120, 127], rows=20)  # clamped to the MIDI range, notes still shown
    assert top.hi == 128 and top.row_of(127) == 0 and top.row_of(120) is not None
    assert Window(0, 10, 3).row_of(29) == 0 and Window(0, 10, 3).row_of(30) is None


def test_roll_scales_with_the_terminal():
    snap = fixed_snapshot()
    small, _ = render_roll(snap, 47, 14)
    big, _ = render_roll(snap, 118, 36)
    assert len(small.plain.split("\n")) == 14 and len(big.plain.split("\n")) == 36
    # wider: twice the columns per beat, and more beats shown
    assert big.plain.count("│") > small.plain.count("│")


