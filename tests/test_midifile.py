"""Reading and writing Standard MIDI Files: hand-made files in, notes on the 24-tick grid out."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import mido
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from improv.core.midifile import MidiFileError, Score, read_midi, score_tokens, write_midi
from improv.core.tokens import BAR, Note, is_time_shift, shift_ticks

# --- writing files by hand -----------------------------------------------------------------


def vlq(n: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def mtrk(*events: tuple[int, bytes]) -> bytes:
    """A track chunk from ``(delta, raw event bytes)``; end of track appended."""
    data = b"".join(vlq(d) + raw for d, raw in events) + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">L", len(data)) + data


def smf(fmt: int, tpb: int, *tracks: bytes) -> bytes:
    return b"MThd" + struct.pack(">LHHH", 6, fmt, len(tracks), tpb) + b"".join(tracks)


def tempo(us: int) -> bytes:
    return b"\xff\x51\x03" + us.to_bytes(3, "big")


def meter(num: int, den: int) -> bytes:
    return b"\xff\x58\x04" + bytes([num, den.bit_length() - 1, 24, 8])


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def mido_file(path: Path, tpb: int, tracks: list[list[tuple[int, mido.Message]]]) -> Path:
    """A format 1 file from tracks of ``(absolute tick, message)``."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpb)
    for timed in tracks:
        track, now = mido.MidiTrack(), 0
        for t, msg in sorted(timed, key=lambda x: x[0]):
            track.append(msg.copy(time=t - now))
            now = t
        mid.tracks.append(track)
    mid.save(path)
    return path


def on(pitch: int, vel: int = 100, ch: int = 0) -> mido.Message:
    return mido.Message("note_on", note=pitch, velocity=vel, channel=ch)


def off(pitch: int, ch: int = 0) -> mido.Message:
    return mido.Message("note_off", note=pitch, velocity=64, channel=ch)


# --- reading -------------------------------------------------------------------------------


def test_format0_running_status_and_velocity_zero_offs(tmp_path):
    # tpb 96: four file ticks per grid tick.
    track = mtrk(
        (0, meter(3, 4)),
        (0, tempo(500_000)),
        (0, b"\x90\x3c\x64"),  # C4 on, v100
        (0, b"\x40\x50"),  # running status: E4 on, v80
        (96, b"\x3c\x00"),  # running status, velocity 0: C4 off
        (0, b"\x40\x00"),  # E4 off
        (48, b"\x43\x70"),  # G4 on, v112
        (0, tempo(400_000)),
        (48, b"\x80\x43\x40"),  # an explicit note-off
        (0, b"\x99\x24\x64"),  # a drum on channel 10
        (24, b"\x24\x00"),
    )
    path = write_bytes(tmp_path / "f0.mid", smf(0, 96, track))
    score = read_midi(path)
    assert score.notes == [Note(0, 24, 60, 100), Note(0, 24, 64, 80), Note(36, 48, 67, 112)]
    assert score.tempos == [(0, 500_000), (36, 400_000)]
    assert score.meters == [(0, 3, 4)]
    assert score.end_tick == 54
    assert Note(48, 54, 36, 100) in read_midi(path, keep_drums=True).notes


@pytest.mark.parametrize("tpb", [96, 480, 960])
def test_format1_tempo_and_meter_changes(tmp_path, tpb):
    q = tpb  # one quarter in file ticks
    conductor = [
        (0, mido.MetaMessage("set_tempo", tempo=600_000)),
        (0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
        (4 * q, mido.MetaMessage("time_signature", numerator=6, denominator=8)),
        (5 * q, mido.MetaMessage("set_tempo", tempo=300_000)),
        (7 * q, mido.MetaMessage("time_signature", numerator=7, denominator=8)),
    ]
    melody = [(0, on(72, 90)), (q // 2, off(72)), (q // 2, on(74, 91)), (5 * q, off(74))]
    bass = [(0, on(48, 60, ch=1)), (4 * q, off(48, ch=1)), (4 * q, on(43, 61, ch=1))]
    bass += [(8 * q + q // 4, off(43, ch=1))]
    path = mido_file(tmp_path / "f1.mid", tpb, [conductor, melody, bass])
    score = read_midi(path)
    assert score.notes == [
        Note(0, 12, 72, 90),
        Note(0, 96, 48, 60),
        Note(12, 120, 74, 91),
        Note(96, 198, 43, 61),
    ]
    assert score.tempos == [(0, 600_000), (120, 300_000)]
    assert score.meters == [(0, 4, 4), (96, 6, 8), (168, 7, 8)]
    assert score.end_tick == 198
    assert [n.pitch for n in read_midi(path, channels={1}).notes] == [48, 43]


def test_defaults_and_repeated_changes(tmp_path):
    # Tempo and meter first given late, then repeated (a copy mid-bar must not move bar lines).
    track = mtrk(
        (0, b"\x90\x3c\x64"),
        (96, tempo(500_000)),
        (0, meter(4, 4)),
        (50, tempo(500_000)),
        (0, meter(4, 4)),
        (46, b"\x80\x3c\x00"),
        (0, meter(3, 4)),
    )
    score = read_midi(write_bytes(tmp_path / "late.mid", smf(0, 96, track)))
    assert score.tempos == [(0, 500_000)]
    assert score.meters == [(0, 4, 4), (48, 3, 4)]
    assert score.notes == [Note(0, 48, 60, 100)]


def test_drum_channel_dropped_unless_kept(tmp_path):
    timed = [(0, on(36, ch=9)), (240, off(36, ch=9)), (0, on(60)), (480, off(60))]
    path = mido_file(tmp_path / "drums.mid", 480, [timed])
    assert [n.pitch for n in read_midi(path).notes] == [60]
    assert read_midi(path, keep_drums=True).notes == [Note(0, 12, 36, 100), Note(0, 24, 60, 100)]
    assert read_midi(path, keep_drums=True, channels={9}).notes == [Note(0, 12, 36, 100)]


def test_overlapping_notes_of_one_key(tmp_path):
    q = 96
    timed = [
        # on on off off: the second note-on cuts the first, the first off is the first note's.
        (0, on(60, 80)),
        (q, on(60, 90)),
        (2 * q, off(60)),
        (3 * q, off(60)),
        # on(t) off(t) in the wrong order still starts a note at t.
        (0, on(62, 70)),
        (q, on(62, 71)),
        (q, off(62)),
        (2 * q, off(62)),
        # The same note twice at once is one note (the later velocity).
        (0, on(64, 50)),
        (0, on(64, 51)),
        (q, off(64)),
        (q, off(64)),
        # Different channels are different strings: both notes stay.
        (0, on(67, 40, ch=2)),
        (0, on(67, 41, ch=3)),
        (q, off(67, ch=2)),
        (2 * q, off(67, ch=3)),
    ]
    notes = read_midi(mido_file(tmp_path / "overlap.mid", q, [timed])).notes
    assert notes == [
        Note(0, 24, 60, 80),
        Note(0, 24, 62, 70),
        Note(0, 24, 64, 51),
        Note(0, 24, 67, 40),
        Note(0, 48, 67, 41),
        Note(24, 48, 62, 71),
        Note(24, 72, 60, 90),
    ]


def test_rounding_short_and_unclosed_notes(tmp_path):
    timed = [
        (10, on(60)),  # 0.5 grid ticks rounds up to 1
        (30, off(60)),  # 1.5 -> 2
        (0, on(62)),
        (5, off(62)),  # shorter than a tick: one tick
        (100, on(64)),
        (115, off(64)),  # 5 and 5.75 grid ticks: 5..6
        (480, on(65)),  # never closed: ends at the end of the track
        (960, mido.MetaMessage("marker", text="end")),
    ]
    notes = read_midi(mido_file(tmp_path / "round.mid", 480, [timed])).notes
    assert notes == [Note(0, 1, 62, 100), Note(1, 2, 60, 100), Note(5, 6, 64, 100),
                     Note(24, 48, 65, 100)]  # fmt: skip


# --- writing and round trips ---------------------------------------------------------------


def dedupe(changes: list[tuple]) -> list[tuple]:
    return [c for i, c in enumerate(changes) if i == 0 or c[1:] != changes[i - 1][1:]]


@st.composite
def scores(draw):
    cursor: dict[int, int] = {}
    notes = []
    for _ in range(draw(st.integers(0, 30))):
        p = draw(st.integers(0, 127))
        start = cursor.get(p, 0) + draw(st.integers(0, 100))
        end = start + draw(st.integers(1, 200))
        cursor[p] = end
        notes.append(Note(start, end, p, draw(st.integers(1, 127))))
    meters = [(0, 4, 4)] + [
        (t, *draw(st.sampled_from([(3, 4), (6, 8), (5, 4), (7, 8), (4, 4)])))
        for t in sorted(draw(st.lists(st.integers(1, 1000), max_size=3, unique=True)))
    ]
    tempos = [(0, draw(st.integers(200_000, 1_500_000)))] + [
        (t, draw(st.integers(200_000, 1_500_000)))
        for t in sorted(draw(st.lists(st.integers(1, 1000), max_size=3, unique=True)))
    ]
    end = max([n.end for n in notes] + [t for t, *_ in meters + tempos]) + draw(st.integers(0, 99))
    # A repeated value is no change (and a repeated meter would restart the bar grid).
    meters, tempos = dedupe(meters), dedupe(tempos)
    return Score(notes=sorted(notes), tempos=tempos, meters=meters, end_tick=end)


@settings(max_examples=40, deadline=None)
@given(scores(), st.sampled_from([96, 100, 480, 960]))
def test_write_read_round_trip(score, tpb):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "round.mid"
        write_midi(path, score, ticks_per_beat=tpb)
        back = read_midi(path, keep_drums=True)
    assert back.notes == score.notes
    assert back.tempos == score.tempos
    assert back.meters == score.meters
    assert back.end_tick == score.end_tick
    assert score_tokens(back, style=3) == score_tokens(score, style=3)


def test_write_named_tracks(tmp_path):
    human = [Note(0, 24, 60, 80), Note(24, 48, 62, 80)]
    machine = [Note(12, 36, 60, 100), Note(48, 96, 67, 30)]  # overlaps the human's C4
    score = Score(tempos=[(0, 500_000), (48, 450_000)], meters=[(0, 3, 4)], end_tick=144)
    path = tmp_path / "session.mid"
    write_midi(path, score, tracks={"human": human, "machine": machine}, channel=2)
    mid = mido.MidiFile(path)
    assert mid.type == 1 and len(mid.tracks) == 3
    names = [m.name for t in mid.tracks for m in t if m.type == "track_name"]
    assert names == ["human", "machine"]
    assert {m.channel for t in mid.tracks for m in t if m.type == "note_on"} == {2}
    back = read_midi(path)
    assert back.notes == sorted(human + machine)
    assert back.tempos == score.tempos and back.meters == score.meters
    assert back.end_tick == 144


def test_score_tokens_uses_meters_and_end():
    score = Score(notes=[Note(0, 24, 60, 80)], meters=[(0, 3, 4)], end_tick=144)
    tokens = score_tokens(score)
    assert sum(shift_ticks(t) for t in tokens if is_time_shift(t)) == 144
    assert tokens.count(BAR) == 3  # 0, 72, 144 in 3/4


# --- bad files -----------------------------------------------------------------------------


def good_file(tmp_path: Path) -> bytes:
    path = tmp_path / "good.mid"
    write_midi(path, Score(notes=[Note(0, 24, 60, 80), Note(24, 48, 64, 80)], end_tick=96))
    return path.read_bytes()


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = good_file(tmp_path)
    cases = {
        "missing": (None, "no such file"),
        "empty": (b"", "empty"),
        "text": (b"This is a text file, not music.\n", "not a Standard MIDI File"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "corrupt": (good[:14] + b"JUNK" + good[18:], "corrupt"),
        "bad status": (smf(0, 96, mtrk((0, b"\xf4\x01\x02"))), "corrupt"),
        "smpte": (good[:12] + b"\xe7\x28" + good[14:], "SMPTE"),
    }
    out = {}
    for name, (data, expect) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.mid"
        if data is not None:
            path.write_bytes(data)
        out[name] = (path, expect)
    return out


@pytest.mark.parametrize(
    "case", ["missing", "empty", "text", "truncated", "corrupt", "bad status", "smpte"]
)
def test_bad_files_raise_a_helpful_error(tmp_path, case):
    path, expect = bad_files(tmp_path)[case]
    with pytest.raises(MidiFileError) as info:
        read_midi(path)
    msg = str(info.value)
    assert expect in msg and str(path) in msg
    assert "\n" not in msg
    # Every message says what to do next.
    assert any(w in msg for w in ("check", "export", "repair", "give")), msg


def test_folder_and_unwritable_target(tmp_path):
    with pytest.raises(MidiFileError, match="folder"):
        read_midi(tmp_path)
    with pytest.raises(MidiFileError, match="cannot write"):
        write_midi(tmp_path / "no" / "such" / "dir.mid", Score())
