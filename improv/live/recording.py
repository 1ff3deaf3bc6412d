"""Crash-safe session recording: a journal while playing, a Standard MIDI File at the end.

This module owns the session file. While a session runs, every event goes to an
append-only journal next to the target (``NAME.mid.partial``), one text line per event,
written by a background thread: flushed whenever the queue runs dry or 0.5 s have passed,
and fsync'd about once a second. So a crash or a power cut loses at most the last second,
and callers (the session thread, the thread that reports what the I/O process sent)
never wait for the disk: they only put a tuple on a queue.

``close()`` turns the journal into a format-1 MIDI file (tempo/meter track, "human",
"machine") and deletes the journal. After a crash, ``improv recover NAME.mid.partial``
does the same from whatever reached the disk, a torn last line included.

Journal format (text, one record per line, fields separated by single spaces)::

    improv-journal 1 24          header: version, ticks per quarter
    12.5 h 903c64                tick, track (h human, m machine), MIDI bytes in hex
    96 t tempo 500000            tick, tempo/meter track: tempo in microseconds per quarter
    96 t meter 3 4               time signature
    96 t marker response         a marker (the rest of the line)

Ticks are 24 per quarter as everywhere in the live path; fractions are kept (two
decimals) so a human's timing survives finer than the grid. The MIDI file uses 480 ticks
per quarter.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from pathlib import Path

import mido

from improv.core.cli_help import with_examples
from improv.core.grid import TICKS_PER_QUARTER

FILE_TICKS_PER_BEAT = 480
FLUSH_EVERY_S = 0.5
FSYNC_EVERY_S = 1.0
HEADER = f"improv-journal 1 {TICKS_PER_QUARTER}"
TRACKS = {"human": "h", "machine": "m"}
_CODES = {v: k for k, v in TRACKS.items()}


class RecordingError(Exception):
    """A recording that cannot be written or recovered; the message says what to do."""


def journal_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".partial")


def _fmt_tick(tick: float) -> str:
    if tick < 0 or tick != tick or tick == float("inf"):
        raise RecordingError(f"tick {tick!r} is not a time in the session: pass a tick >= 0")
    return str(tick) if isinstance(tick, int) else f"{tick:.2f}".rstrip("0").rstrip(".")


def _tempo_record(bpm: float) -> str:
    if not 1 <= bpm <= 1000:
        raise RecordingError(f"tempo {bpm} bpm is out of range: use 1 to 1000")
    return f"tempo {round(60_000_000 / bpm)}"


def _meter_record(numerator: int, denominator: int) -> str:
    if not 1 <= numerator <= 32 or denominator not in (1, 2, 4, 8, 16, 32):
        raise RecordingError(f"meter {numerator}/{denominator} is not usable: e.g. 3/4, 6/8")
    return f"meter {numerator} {denominator}"


class SessionRecorder:
    """Records the human and machine tracks of one session to ``path`` (a .mid file).

    Thread-safe and non-blocking: every method except ``sync`` and ``close`` only
    enqueues. Ticks are 24 per quarter from the session start.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        bpm: float = 120.0,
        meter: tuple[int, int] = (4, 4),
    ):
        first = [(0, "t", _tempo_record(bpm)), (0, "t", _meter_record(*meter))]
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.set_aside: Path | None = None  # where a note-less leftover journal was moved
        if self.journal.exists():
            self.set_aside = _set_aside_if_empty(self.journal)
            if self.set_aside is None:
                raise RecordingError(
                    f"{self.journal} is left from an earlier session: run "
                    f"'improv recover {self.journal}' to save it, or delete it"
                )
        if not self.path.parent.is_dir():
            raise RecordingError(f"folder {self.path.parent} does not exist: create it first")
        try:
            self._file = open(self.journal, "x", encoding="ascii", newline="\n")
        except OSError as e:
            raise RecordingError(f"cannot create {self.journal} ({e}): check the folder") from None
        self._file.write(HEADER + "\n")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.error: OSError | None = None
        self.closed = False
        for item in first:
            self._queue.put(item)
        self._thread = threading.Thread(target=self._writer, name="recording", daemon=True)
        self._thread.start()

    # --- what callers record (cheap: formatting happens on the writer thread) -------------

    def _put(self, item: tuple) -> None:
        if self.closed:
            raise RecordingError(f"{self.path} is closed: start a new SessionRecorder")
        _fmt_tick(item[0])  # a bad tick fails here, in the caller, not on the writer thread
        self._queue.put(item)

    def add(self, track: str, msg: mido.Message, tick: float) -> None:
        """Record a channel message (note, CC, program, bend...) on "human" or "machine"."""
        if track not in TRACKS:
            raise RecordingError(f"track {track!r} is unknown: use 'human' or 'machine'")
        if not isinstance(msg, mido.Message) or msg.is_meta or msg.type == "sysex":
            raise RecordingError(f"{msg!r} is not a channel message: record mido.Message only")
        self._put((tick, TRACKS[track], msg.bytes()))

    def note_on(self, track: str, pitch: int, velocity: int, tick: float, channel: int = 0):
        self.add(track, mido.Message("note_on", note=pitch, velocity=velocity,
                                     channel=channel), tick)

    def note_off(self, track: str, pitch: int, tick: float, channel: int = 0):
        self.add(track, mido.Message("note_off", note=pitch, velocity=0, channel=channel), tick)

    def set_tempo(self, bpm: float, tick: float) -> None:
        self._put((tick, "t", _tempo_record(bpm)))

    def set_meter(self, numerator: int, denominator: int, tick: float) -> None:
        self._put((tick, "t", _meter_record(numerator, denominator)))

    def marker(self, text: str, tick: float) -> None:
        """A marker in the tempo track (e.g. "call", "response", a preset name)."""
        clean = " ".join(text.split()).encode("ascii", "replace").decode()
        self._put((tick, "t", f"marker {clean}"))

    # --- the writer thread ----------------------------------------------------------------

    def _writer(self) -> None:
        last_flush = last_sync = time.monotonic()
        unflushed = unsynced = False
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_EVERY_S / 2)
            except queue.Empty:
                item = None
            if isinstance(item, tuple):
                tick, code, payload = item
                body = bytes(payload).hex() if code in _CODES else payload
                self._io(self._file.write, f"{_fmt_tick(tick)} {code} {body}\n")
                unflushed = True
            now = time.monotonic()
            # sync() and close() hand over an Event / _STOP: everything before it goes to disk now
            urgent = item is _STOP or isinstance(item, threading.Event)
            if unflushed and (urgent or self._queue.empty() or now - last_flush >= FLUSH_EVERY_S):
                self._io(self._file.flush)
                last_flush, unflushed, unsynced = now, False, True
            if unsynced and (urgent or now - last_sync >= FSYNC_EVERY_S):
                self._io(os.fsync, self._file.fileno())
                last_sync, unsynced = now, False
            if isinstance(item, threading.Event):
                item.set()
            if item is _STOP:
                break
        self._io(self._file.close)

    def _io(self, op, *args) -> None:
        if self.error is not None:
            return  # the disk failed once; keep the session playing, report at close
        try:
            op(*args)
        except OSError as e:
            self.error = e

    def sync(self, timeout: float = 5.0) -> bool:
        """Block until everything recorded so far is on disk (fsync'd). Not for the live path."""
        if self.closed:
            return self.error is None
        done = threading.Event()
        self._queue.put(done)  # the queue is FIFO: the writer reaches it after earlier records
        return done.wait(timeout) and self.error is None

    def close(self, end_tick: float | None = None) -> Path:
        """Stop, write the .mid (notes still sounding end at ``end_tick``), delete the journal."""
        if self.closed:
            return self.path
        if end_tick is not None:
            self.marker("end", end_tick)
        self.closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self.error is not None:
            raise RecordingError(
                f"writing {self.journal} failed ({self.error}): free disk space, then run "
                f"'improv recover {self.journal}' to save what was written"
            )
        recover(self.journal, self.path)
        self.journal.unlink()
        return self.path

    def __enter__(self) -> SessionRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_STOP = object()


def _set_aside_if_empty(journal: Path) -> Path | None:
    """A journal a start left without a single note (a signal or a crash while the model
    loaded) blocks nothing: it is moved to ``NAME.mid.partial.empty`` and that path returned.
    None when it holds notes (or cannot be read): those are the player's, never moved."""
    try:
        records, _bad = read_journal(journal)
    except RecordingError:
        try:
            empty = journal.stat().st_size == 0
        except OSError:
            return None
        if not empty:
            return None
        records = []
    if any(track in TRACKS for _, track, _ in records):
        return None
    aside = journal.with_name(journal.name + ".empty")
    try:
        os.replace(journal, aside)
    except OSError:
        return None
    return aside


# --- journal -> MIDI file ------------------------------------------------------------------


def read_journal(partial: Path) -> tuple[list[tuple[float, str, object]], int]:
    """Records in file order and the number of unreadable lines (a torn tail, garbage)."""
    try:
        data = partial.read_bytes()
    except OSError as e:
        raise RecordingError(f"cannot read {partial} ({e}): check the path") from None
    if not data:
        raise RecordingError(f"{partial} is empty: the session stopped before recording; delete it")
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a record the crash cut short
    if not lines or lines[0].decode("ascii", "replace").strip() != HEADER:
        raise RecordingError(f"{partial} is not an improv session journal: pass a .partial file")
    records, bad = [], 0
    for raw in lines[1:]:
        try:
            records.append(_parse(raw.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            bad += 1
    return records, bad


def _parse(line: str) -> tuple[float, str, object]:
    tick_s, code, rest = line.split(" ", 2)
    tick = float(tick_s)
    if not 0 <= tick < 1e12:
        raise ValueError(line)
    if code in _CODES:
        msg = mido.Message.from_bytes(bytes.fromhex(rest))
        return tick, _CODES[code], msg
    if code != "t":
        raise ValueError(line)
    kind, _, arg = rest.partition(" ")
    if kind == "tempo":
        return tick, "tempo", mido.MetaMessage("set_tempo", tempo=int(arg))
    if kind == "meter":
        n, d = (int(x) for x in arg.split())
        return tick, "tempo", mido.MetaMessage("time_signature", numerator=n, denominator=d)
    if kind == "marker":
        return tick, "tempo", mido.MetaMessage("marker", text=arg)
    raise ValueError(line)


def _track(name: str, events: list[tuple[float, object]], end: int) -> mido.MidiTrack:
    """A track from (file tick, message) pairs; stable sort keeps arrival order per tick."""
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0)])
    now = 0
    for tick, msg in sorted(events, key=lambda e: e[0]):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(0, end - now)))
    return track


def journal_to_midi(records: list[tuple[float, str, object]]) -> mido.MidiFile:
    """Format-1 MIDI file from journal records.

    Notes still sounding at the end stop at the last recorded tick, but not before they
    have sounded a quarter note, so a note struck just before a crash is still heard.
    """
    scale = FILE_TICKS_PER_BEAT / TICKS_PER_QUARTER
    by_track: dict[str, list[tuple[int, object]]] = {"tempo": [], "human": [], "machine": []}
    sounding: dict[tuple[str, int, int], list[int]] = {}  # (track, channel, pitch) -> onsets
    end = 0
    for tick, track, msg in records:
        t = round(tick * scale)
        end = max(end, t)
        by_track[track].append((t, msg))
        if msg.type in ("note_on", "note_off"):
            onsets = sounding.setdefault((track, msg.channel, msg.note), [])
            if msg.type == "note_on" and msg.velocity > 0:
                onsets.append(t)
            elif onsets:
                onsets.pop(0)
    last = end
    for (track, channel, pitch), onsets in sounding.items():
        for onset in onsets:
            off = max(end, onset + FILE_TICKS_PER_BEAT)
            last = max(last, off)
            by_track[track].append(
                (off, mido.Message("note_off", channel=channel, note=pitch, velocity=0))
            )
    mid = mido.MidiFile(type=1, ticks_per_beat=FILE_TICKS_PER_BEAT)
    for name in ("tempo", "human", "machine"):
        mid.tracks.append(_track(name, by_track[name], last))
    return mid


def recover(partial_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Write a playable .mid from a journal; returns its path.

    The default output is the journal's name without ``.partial`` (``-recovered`` is added
    when that file already exists). The journal itself is left in place.
    """
    partial = Path(partial_path)
    records, _bad = read_journal(partial)
    if out_path is None:
        name = partial.name.removesuffix(".partial")
        out = partial.with_name(name if name.endswith(".mid") else name + ".mid")
        if out.exists():
            out = out.with_name(out.stem + "-recovered.mid")
    else:
        out = Path(out_path)
    mid = journal_to_midi(records)
    tmp = out.with_name(out.name + ".tmp")
    try:
        mid.save(tmp)  # write then rename, so a crash here never leaves half a .mid
        os.replace(tmp, out)
    except OSError as e:
        raise RecordingError(f"cannot write {out} ({e}): choose another place with -o") from None
    return out


def recover_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Turn a partial session recording (NAME.mid.partial) into a .mid.",
        **with_examples(
            "improv recover ~/Music/improv-sessions/2026-12-03_2100.mid.partial",
            "improv recover set.mid.partial -o rescued.mid"))
    ap.add_argument("file", type=Path, help="the .partial journal left by a session")
    ap.add_argument("-o", "--output", type=Path, help="where to write the .mid")
    args = ap.parse_args(argv)
    try:
        records, bad = read_journal(args.file)
        out = recover(args.file, args.output)
    except RecordingError as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 2
    counts = {t: sum(1 for r in records if r[1] == t and r[2].type == "note_on")
              for t in ("human", "machine")}
    print(f"wrote {out}: {counts['human']} human and {counts['machine']} machine note-ons"
          + (f", {bad} unreadable line(s) skipped" if bad else ""))
    print(f"the journal {args.file} is kept; delete it once the .mid is checked")
    return 0


main = recover_main

if __name__ == "__main__":
    sys.exit(recover_main())
