"""Session recording: the journal while playing, the .mid at close, recovery after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mido
import pytest

from improv.live import recording as R
from improv.live.recording import RecordingError, SessionRecorder

SCALE = R.FILE_TICKS_PER_BEAT // R.TICKS_PER_QUARTER


def notes_of(track: mido.MidiTrack) -> list[tuple[float, float, int, int]]:
    """(start, end, pitch, velocity) on the 24-tick grid, sorted."""
    now, open_, out = 0, {}, []
    for msg in track:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            open_[msg.note] = (now, msg.velocity)
        elif msg.type in ("note_on", "note_off") and msg.note in open_:
            start, vel = open_.pop(msg.note)
            out.append((start / SCALE, now / SCALE, msg.note, vel))
    assert not open_, f"notes left sounding: {open_}"
    return sorted(out)


def metas(track: mido.MidiTrack, kind: str) -> list[tuple[int, mido.MetaMessage]]:
    now, out = 0, []
    for msg in track:
        now += msg.time
        if msg.type == kind:
            out.append((now // SCALE, msg))
    return out


def test_record_and_close_writes_both_tracks_with_notes_and_tempo(tmp_path):
    path = tmp_path / "take.mid"
    rec = SessionRecorder(path, bpm=90, meter=(3, 4))
    rec.note_on("human", 60, 80, 0)
    rec.note_on("machine", 67, 100, 72.5)  # fractions of a tick survive
    rec.note_off("human", 60, 24)
    rec.add("human", mido.Message("note_on", note=62, velocity=0), 48)  # no-op: 62 not sounding
    rec.note_on("human", 62, 70, 24)
    rec.add("human", mido.Message("note_on", note=62, velocity=0), 48)
    rec.add("machine", mido.Message("control_change", control=64, value=127), 72)
    rec.set_tempo(120, 96)
    rec.note_off("machine", 67, 120)
    rec.marker("response", 72)
    assert rec.close() == path
    assert not R.journal_path(path).exists()

    mid = mido.MidiFile(path)
    assert mid.type == 1 and mid.ticks_per_beat == 480
    assert [t.name for t in mid.tracks] == ["tempo", "human", "machine"]
    assert notes_of(mid.tracks[1]) == [(0, 24, 60, 80), (24, 48, 62, 70)]
    assert notes_of(mid.tracks[2]) == [(72.5, 120, 67, 100)]
    tempos = [(t, m.tempo) for t, m in metas(mid.tracks[0], "set_tempo")]
    assert tempos == [(0, 666_667), (96, 500_000)]
    [(_, meter)] = metas(mid.tracks[0], "time_signature")
    assert (meter.numerator, meter.denominator) == (3, 4)
    assert [m.text for _, m in metas(mid.tracks[0], "marker")] == ["response"]
    assert any(m.type == "control_change" and m.value == 127 for m in mid.tracks[2])
    # 4 quarters at 90 bpm, 1 at 120 bpm, by mido's own clock
    assert mid.length == pytest.approx(4 * 60 / 90 + 60 / 120, abs=1e-3)


def test_unclosed_notes_get_note_offs_at_close(tmp_path):
    path = tmp_path / "held.mid"
    with SessionRecorder(path) as rec:
        rec.note_on("machine", 64, 90, 10)
        rec.note_on("human", 48, 60, 0)
        rec.note_on("human", 52, 60, 30)
    mid = mido.MidiFile(path)
    # a note struck at the very end still sounds a quarter note
    assert notes_of(mid.tracks[1]) == [(0, 30, 48, 60), (30, 54, 52, 60)]
    assert notes_of(mid.tracks[2]) == [(10, 34, 64, 90)]


def test_close_end_tick_extends_held_notes(tmp_path):
    rec = SessionRecorder(tmp_path / "e.mid")
    rec.note_on("human", 60, 80, 0)
    mid = mido.MidiFile(rec.close(end_tick=96))
    assert notes_of(mid.tracks[1]) == [(0, 96, 60, 80)]


def test_journal_reaches_disk_without_sync_or_close(tmp_path):
    rec = SessionRecorder(tmp_path / "live.mid")
    rec.note_on("human", 61, 99, 5)
    journal = R.journal_path(tmp_path / "live.mid")
    deadline = time.monotonic() + 10  # liveness, not a timing target: the writer flushes itself
    while b"903d63" not in journal.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"5 h 903d63\n" in journal.read_bytes()
    rec.close()


CRASHING_SESSION = textwrap.dedent("""
    import os, sys
    from improv.live.recording import SessionRecorder
    rec = SessionRecorder(sys.argv[1], bpm=100)
    for i in range(8):
        rec.note_on("human", 60 + i, 70, i * 24)
        rec.note_off("human", 60 + i, i * 24 + 12)
    rec.note_on("machine", 72, 90, 200)   # still sounding at the crash
    rec.set_tempo(150, 192)
    rec.note_on("machine", 84, 90, 210)   # the record the truncation will tear
    assert rec.sync()
    os._exit(3)   # no close(), no atexit, no flush: as near a crash as Python gets
""")


def test_crash_then_truncated_journal_recovers_to_a_playable_file(tmp_path):
    target = tmp_path / "crash.mid"
    run = subprocess.run([sys.executable, "-c", CRASHING_SESSION, str(target)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 3, run.stderr
    assert not target.exists()
    journal = R.journal_path(target)
    data = journal.read_bytes()
    assert data.endswith(b"210 m 90545a\n")
    journal.write_bytes(data[:-4])  # power cut in the middle of the last record

    out = R.recover(journal)
    assert out == target and journal.exists()  # the journal stays until the user deletes it
    mid = mido.MidiFile(out)
    assert notes_of(mid.tracks[1]) == [(i * 24, i * 24 + 12, 60 + i, 70) for i in range(8)]
    assert notes_of(mid.tracks[2]) == [(200, 224, 72, 90)]  # closed; the torn 84 is gone
    assert [(t, m.tempo) for t, m in metas(mid.tracks[0], "set_tempo")] == [
        (0, 600_000), (192, 400_000)]
    with pytest.raises(RecordingError, match="left from an earlier session"):
        SessionRecorder(target)


def test_recover_skips_garbage_lines(tmp_path):
    journal = tmp_path / "g.mid.partial"
    journal.write_bytes(
        f"{R.HEADER}\n0 t tempo 500000\n0 h 903c40\n\0\0\0\0\n12 h zz\n-3 h 903e40\n"
        "24 h 803c00\n24 q 903c40\n".encode()
    )
    records, bad = R.read_journal(journal)
    assert bad == 4 and len(records) == 3
    out = R.recover(journal, tmp_path / "g-out.mid")
    assert notes_of(mido.MidiFile(out).tracks[1]) == [(0, 24, 60, 64)]


def test_recover_does_not_overwrite_an_existing_mid(tmp_path):
    rec = SessionRecorder(tmp_path / "s.mid")
    rec.note_on("human", 60, 80, 0)
    rec.sync()
    (tmp_path / "s.mid").write_bytes(b"keep me")
    out = R.recover(R.journal_path(tmp_path / "s.mid"))
    assert out == tmp_path / "s-recovered.mid"
    assert (tmp_path / "s.mid").read_bytes() == b"keep me"
    rec.close()  # the session's own file is the recorder's to replace
    assert notes_of(mido.MidiFile(tmp_path / "s.mid").tracks[1]) == [(0, 24, 60, 80)]


def test_recover_cli(tmp_path, capsys):
    with SessionRecorder(tmp_path / "c.mid") as rec:
        rec.note_on("machine", 70, 80, 0)
        rec.note_off("machine", 70, 24)
        rec.sync()
        journal_copy = tmp_path / "copy.mid.partial"
        journal_copy.write_bytes(R.journal_path(tmp_path / "c.mid").read_bytes())
    out = tmp_path / "out.mid"
    assert R.recover_main([str(journal_copy), "-o", str(out)], prog="improv recover") == 0
    assert "0 human and 1 machine note-ons" in capsys.readouterr().out
    assert notes_of(mido.MidiFile(out).tracks[2]) == [(0, 24, 70, 80)]

    not_journal = tmp_path / "x.partial"
    not_journal.write_text("hello\n")
    assert R.recover_main([str(not_journal)], prog="improv recover") == 2
    assert "not an improv session journal" in capsys.readouterr().err
    empty = tmp_path / "e.partial"
    empty.write_bytes(b"")
    assert R.recover_main([str(empty)]) == 2
    assert R.recover_main([str(tmp_path / "missing.partial")]) == 2


def test_bad_calls_raise_clear_errors(tmp_path):
    with pytest.raises(RecordingError, match="does not exist"):
        SessionRecorder(tmp_path / "no" / "such.mid")
    with pytest.raises(RecordingError, match="out of range"):
        SessionRecorder(tmp_path / "t.mid", bpm=0)
    assert not R.journal_path(tmp_path / "t.mid").exists()  # nothing left behind
    rec = SessionRecorder(tmp_path / "t.mid")
    with pytest.raises(RecordingError, match="use 'human' or 'machine'"):
        rec.note_on("drums", 60, 80, 0)
    with pytest.raises(RecordingError, match="tick >= 0"):
        rec.note_on("human", 60, 80, -1)
    with pytest.raises(RecordingError, match="channel message"):
        rec.add("human", mido.MetaMessage("marker", text="x"), 0)
    rec.close()
    with pytest.raises(RecordingError, match="is closed"):
        rec.note_on("human", 60, 80, 0)


def test_many_events_from_two_threads(tmp_path):
    import threading

    rec = SessionRecorder(tmp_path / "busy.mid")

    def play(track, base):
        for i in range(500):
            rec.note_on(track, base + i % 12, 64, i * 2)
            rec.note_off(track, base + i % 12, i * 2 + 1)

    threads = [threading.Thread(target=play, args=a) for a in (("human", 48), ("machine", 72))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mid = mido.MidiFile(rec.close())
    assert len(notes_of(mid.tracks[1])) == 500 and len(notes_of(mid.tracks[2])) == 500
    assert os.listdir(tmp_path) == ["busy.mid"]


def test_journal_path_and_partial_name(tmp_path):
    assert R.journal_path(tmp_path / "a.mid") == Path(str(tmp_path / "a.mid") + ".partial")


@pytest.mark.parametrize(("body", "moved"), [
    (b"", True),  # killed before the header reached the disk
    (f"{R.HEADER}\n".encode(), True),  # killed while the model loaded
    (f"{R.HEADER}\n0 t tempo 500000\n0 t meter 4 4\n0 t marker folk\n".encode(), True),
    (f"{R.HEADER}\n0 t tempo 500000\n12 h 903c40\n".encode(), False),  # a played note: kept
    (f"{R.HEADER}\n0 t tempo 500000\n12 m 903c40\n".encode(), False),
    (b"not a journal at all\n", False),  # not ours to move
])
def test_a_leftover_journal_without_a_note_is_moved_aside(tmp_path, body, moved):
    target = tmp_path / "set.mid"
    journal = R.journal_path(target)
    journal.write_bytes(body)
    if not moved:
        with pytest.raises(RecordingError, match="left from an earlier session"):
            SessionRecorder(target)
        assert journal.read_bytes() == body
        return
    rec = SessionRecorder(target)
    rec.note_on("human", 60, 90, 0)
    rec.close(24)
    assert rec.set_aside == tmp_path / "set.mid.partial.empty"
    assert rec.set_aside.read_bytes() == body and not journal.exists()
    assert notes_of(mido.MidiFile(target).tracks[1])[0][2] == 60
