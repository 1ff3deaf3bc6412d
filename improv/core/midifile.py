"""Standard MIDI Files <-> notes on the 24-ticks-per-quarter grid.

This module owns reading and writing ``.mid`` files: :func:`read_midi` turns a
format 0, 1 (or 2) file into a :class:`Score` of notes, tempos and meters on the
musical grid of ``tokens``; :func:`write_midi` writes a Score back as a format 1
file (a conductor track, then one track per part); :func:`score_tokens` is the
one way a file becomes tokens. Pitches are kept as they are; ``tokens`` folds
them into the piano range. Every way a file can be unreadable ends in
:class:`MidiFileError`, whose message says what to do.

How the reader resolves what MIDI leaves open:

* All tracks are merged on absolute file ticks, then every tick is moved to the
  grid with ``round(t * 24 / ticks_per_beat)`` (halves round up).
* A note-on with velocity 0 is a note-off.
* One key on one channel of one track sounds once: a second note-on cuts the
  sounding note there, and each note-off belongs to the oldest note still
  waiting for one. So ``on on off off`` is two back-to-back notes, and
  ``on(t) off(t)`` written in that (wrong) order still starts a note at t.
* After rounding, a note shorter than one tick gets one tick; a note that
  would then overlap the next note of its key ends where that one starts (and
  disappears if nothing is left of it). Notes never closed end at the end.
* Channel 10 (index 9, drums) is dropped unless ``keep_drums``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import mido

from improv.core.tokens import TICKS_PER_QUARTER, Note, encode_events, notes_to_events, sort_key

DEFAULT_TEMPO = 500_000  # microseconds per quarter: 120 bpm, the MIDI default
DRUM_CHANNEL = 9


class MidiFileError(Exception):
    """A MIDI file that cannot be read or written; the message says what to do."""


@dataclass
class Score:
    """A piece on the musical grid (24 ticks per quarter).

    ``tempos`` holds ``(tick, microseconds_per_quarter)``; ``meters`` holds
    ``(tick, numerator, denominator)``; ``end_tick`` is where the piece ends.
    """

    notes: list[Note] = field(default_factory=list)
    tempos: list[tuple[int, int]] = field(default_factory=lambda: [(0, 500_000)])
    meters: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, 4, 4)])
    end_tick: int = 0


# --- reading -------------------------------------------------------------------------------


def _rescale(t: int, src: int, dst: int) -> int:
    """``round(t * dst / src)`` with halves up, in integers so long files stay exact."""
    return (2 * t * dst + src) // (2 * src)


def _load(path: str | os.PathLike) -> mido.MidiFile:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise MidiFileError(f"{name}: no such file; check the path")
    if os.path.isdir(name):
        raise MidiFileError(f"{name}: is a folder, not a MIDI file; give a .mid file")
    if os.path.getsize(name) == 0:
        raise MidiFileError(f"{name}: the file is empty; re-export it from your sequencer")
    try:
        with open(name, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MidiFileError(
            f"{name}: cannot read it ({e.strerror or e}); check its permissions"
        ) from e
    if magic != b"MThd":
        raise MidiFileError(
            f"{name}: not a Standard MIDI File (no MThd header); export it as .mid (SMF 0 or 1)"
        )
    try:
        # clip: some real files carry data bytes > 127; keep them playable.
        mid = mido.MidiFile(name, clip=True)
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error) as e:
        why = "it ends too early" if isinstance(e, EOFError) else (str(e) or type(e).__name__)
        raise MidiFileError(
            f"{name}: corrupt or truncated MIDI file ({why}); re-export or repair it"
        ) from e
    if mid.ticks_per_beat <= 0:
        raise MidiFileError(
            f"{name}: uses SMPTE (frame-based) timing, which is not supported; "
            "re-export it with beat-based timing (ticks per quarter)"
        )
    return mid


def _merged(mid: mido.MidiFile) -> list[tuple[int, int, mido.Message]]:
    """``(absolute file tick, track index, message)`` for all tracks, in time order."""
    out = []
    for i, track in enumerate(mid.tracks):
        t = 0
        for msg in track:
            t += msg.time
            out.append((t, i, msg))
    out.sort(key=lambda x: (x[0], x[1]))  # stable: file order within a track
    return out


def _changes(items: list[tuple]) -> list[tuple]:
    """Sorted changes with the last one at each tick winning and repeats removed.

    A repeated meter must go: a copy in mid-bar would restart the bar grid there.
    """
    by_tick: dict[int, tuple] = {}
    for it in items:
        by_tick[it[0]] = it
    out: list[tuple] = []
    for tick in sorted(by_tick):
        if not out or out[-1][1:] != by_tick[tick][1:]:
            out.append(by_tick[tick])
    return out


def _fit(notes: list[Note]) -> list[Note]:
    """Give every note one tick at least, without overlapping the next note of its key."""
    notes = sorted(Note(n.start, max(n.end, n.start + 1), n.pitch, n.velocity) for n in notes)
    out = []
    for i, n in enumerate(notes):
        nxt = notes[i + 1] if i + 1 < len(notes) else None
        if nxt is not None and nxt.start < n.end:
            if nxt.start <= n.start:
                continue  # of two notes starting on one tick, the longer stays
            n = Note(n.start, nxt.start, n.pitch, n.velocity)
        out.append(n)
    return out


def read_midi(
    path: str | os.PathLike, keep_drums: bool = False, channels: set[int] | None = None
) -> Score:
    """Read a Standard MIDI File into a :class:`Score` on the 24-ticks-per-quarter grid.

    ``channels`` (0-based, None = all) picks the channels kept; channel index 9
    (drums) is dropped unless ``keep_drums``.
    """
    mid = _load(path)
    tpb = mid.ticks_per_beat
    tempos: list[tuple[int, int]] = []
    meters: list[tuple[int, int, int]] = []
    # (track, channel, pitch) -> notes waiting for a note-off, oldest first:
    # [start, velocity, end], end set when a newer note-on cut the note short.
    waiting: dict[tuple[int, int, int], list[list]] = {}
    done: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    last = 0
    for t, track, msg in _merged(mid):
        last = t
        if msg.type == "set_tempo":
            tempos.append((t, msg.tempo))
        elif msg.type == "time_signature":
            meters.append((t, msg.numerator, msg.denominator))
        elif msg.type in ("note_on", "note_off"):
            ch = msg.channel
            if (channels is not None and ch not in channels) or (
                ch == DRUM_CHANNEL and not keep_drums
            ):
                continue
            key = (track, ch, msg.note)
            queue = waiting.setdefault(key, [])
            if msg.type == "note_on" and msg.velocity > 0:
                for n in queue:
                    if n[2] is None:
                        n[2] = t  # cut by the new note; its note-off is still owed
                queue.append([t, msg.velocity, None])
            elif queue:
                start, vel, end = queue.pop(0)
                done.setdefault(key, []).append((start, t if end is None else end, vel))
    for key, queue in waiting.items():
        for start, vel, end in queue:
            done.setdefault(key, []).append((start, last if end is None else end, vel))

    notes = []
    for (_, _, pitch), played in done.items():
        grid = [Note(_rescale(s, tpb, 24), _rescale(e, tpb, 24), pitch, v) for s, e, v in played]
        notes += _fit(grid)
    notes.sort()

    # MIDI's defaults (120 bpm, 4/4) hold until the file says otherwise.
    tempos = _changes([(0, DEFAULT_TEMPO)] + [(_rescale(t, tpb, 24), us) for t, us in tempos])
    meters = _changes([(0, 4, 4)] + [(_rescale(t, tpb, 24), n, d) for t, n, d in meters])
    end = max([_rescale(last, tpb, 24)] + [n.end for n in notes])
    return Score(notes=notes, tempos=tempos, meters=meters, end_tick=end)


# --- writing -------------------------------------------------------------------------------


def _track(timed: list[tuple[int, mido.Message]], end: int, name: str = "") -> mido.MidiTrack:
    """A track from ``(absolute file tick, message)`` pairs already in order."""
    track = mido.MidiTrack()
    if name:
        track.append(mido.MetaMessage("track_name", name=name, time=0))
    now = 0
    for t, msg in timed:
        track.append(msg.copy(time=t - now))
        now = t
    track.append(mido.MetaMessage("end_of_track", time=max(0, end - now)))
    return track


def write_midi(
    path: str | os.PathLike,
    score: Score,
    ticks_per_beat: int = 480,
    tracks: dict[str, list[Note]] | None = None,
    channel: int = 0,
) -> None:
    """Write ``score`` as a format 1 file: a conductor track (tempos, meters), then the notes.

    With ``tracks`` (e.g. ``{"human": ..., "machine": ...}``) each part gets its
    own named track and ``score.notes`` is not used.
    """
    if ticks_per_beat <= 0 or ticks_per_beat > 0x7FFF:
        raise ValueError(f"ticks_per_beat {ticks_per_beat} out of range 1..32767")

    def ft(tick: int) -> int:
        return _rescale(tick, TICKS_PER_QUARTER, ticks_per_beat)

    parts = tracks if tracks is not None else {"": score.notes}
    last = max([score.end_tick] + [n.end for notes in parts.values() for n in notes])
    end = ft(last)

    conductor = [(ft(t), mido.MetaMessage("set_tempo", tempo=us)) for t, us in score.tempos]
    conductor += [
        (ft(t), mido.MetaMessage("time_signature", numerator=n, denominator=d))
        for t, n, d in score.meters
    ]
    conductor.sort(key=lambda x: x[0])
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    mid.tracks.append(_track(conductor, end))
    for name, notes in parts.items():
        timed = []
        # A zero-length note would write its note-off before its note-on.
        whole = [Note(n.start, max(n.end, n.start + 1), n.pitch, n.velocity) for n in notes]
        for ev in sorted(notes_to_events(whole), key=sort_key):
            if ev.velocity > 0:
                msg = mido.Message(
                    "note_on", channel=channel, note=ev.pitch, velocity=min(ev.velocity, 127)
                )
            else:
                msg = mido.Message("note_off", channel=channel, note=ev.pitch, velocity=0)
            timed.append((ft(ev.tick), msg))
        mid.tracks.append(_track(timed, end, name))
    try:
        mid.save(os.fspath(path))
    except OSError as e:
        raise MidiFileError(
            f"{os.fspath(path)}: cannot write ({e.strerror or e}); "
            "check that the folder exists and is writable"
        ) from e


# --- tokens --------------------------------------------------------------------------------


def score_tokens(score: Score, style: int | None = None, turns: Iterable[int] = ()) -> list[int]:
    """Tokens for a whole score: its notes in its meters, closed and padded to ``end_tick``."""
    return encode_events(
        notes_to_events(score.notes),
        style=style,
        meters=score.meters,
        end_tick=score.end_tick,
        turns=turns,
    )
