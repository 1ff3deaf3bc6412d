"""`improv demo`: the whole loop with no hardware.

A call phrase (built in, or ``--call FILE.mid``) is played into a real session in
real time through an in-process port; the session hears it, decides the call
has ended, and answers through the same engine, sampler and scheduler as on
stage. The answer is printed as a small text piano roll and written to a .mid
(both players, on two tracks).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import mido

from improv.commands import teardown
from improv.commands.checks import OneLineParser, check_record_path, fail, parse_meter
from improv.commands.jam import JamError, build_rig
from improv.commands.jam_args import add_rig_arguments
from improv.core import tokens as tk
from improv.core.cli_help import with_examples
from improv.core.grid import Meter
from improv.live.session_api import State

# A two-bar call in D major (pitch, start tick, length in ticks), 24 ticks per quarter.
BUILT_IN_CALL: tuple[tuple[int, int, int], ...] = (
    (62, 0, 24), (64, 24, 12), (66, 36, 12), (67, 48, 24), (69, 72, 24),
    (71, 96, 12), (69, 108, 12), (67, 120, 12), (66, 132, 12), (64, 144, 24), (62, 168, 24),
)
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CALL_CAP_BARS = 4  # a --call file is played this long at most (a whole piece, a stuck note)


class Collector:
    """An in-process output port: keeps what it is sent, with the time it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, mido.Message]] = []
        self._lock = threading.Lock()

    def send(self, msg: mido.Message) -> None:
        with self._lock:
            self.sent.append((time.monotonic(), msg))


def load_call(path: Path | None, bar_ticks: int = 4 * tk.TICKS_PER_QUARTER
              ) -> list[tuple[int, int, int]]:
    """The call's notes (pitch, start tick, length), at most ``CALL_CAP_BARS`` bars of them;
    JamError with one line for a file that is not a MIDI file or holds no notes."""
    if path is None:
        return list(BUILT_IN_CALL)
    from improv.core.midifile import MidiFileError, read_midi

    try:
        score = read_midi(path)
    except MidiFileError as e:
        raise JamError(str(e)) from None
    if not score.notes:
        raise JamError(f"{path} has no notes to play as a call; pass a .mid with a melody")
    t0 = score.notes[0].start
    cap = CALL_CAP_BARS * bar_ticks
    call = [(n.pitch, n.start - t0, min(max(1, n.end - n.start), cap - (n.start - t0)))
            for n in score.notes if n.start - t0 < cap]
    if len(call) < len(score.notes) or max(n.end for n in score.notes) - t0 > cap:
        teardown.err(f"improv demo: {path} lasts over {CALL_CAP_BARS} bars; playing its first "
                     f"{CALL_CAP_BARS} as the call")
    return call


def play_call(session, clock, call, start_tick: int) -> None:
    """Press and release the call's keys at their times, as a player would."""
    events = []
    for pitch, start, length in call:
        events.append((start_tick + start + length, 0, pitch))
        events.append((start_tick + start, 1, pitch))
    events.sort(key=lambda e: (e[0], e[1]))
    for tick, on, pitch in events:
        t = clock.tick_to_time(tick)
        while (wait := t - time.monotonic()) > 0:
            time.sleep(min(wait, 0.005))
        msg = mido.Message("note_on", note=pitch, velocity=90 if on else 0)
        session.submit(msg, time.monotonic())


def note_name(pitch: int) -> str:
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def piano_roll(notes: list[tuple[str, int, float, float]], step: int = 6, width: int = 96) -> str:
    """Text piano roll: one row per pitch, one column per ``step`` ticks; o human, # machine."""
    if not notes:
        return "(no notes)"
    t0 = min(n[2] for n in notes)
    lo, hi = min(n[1] for n in notes), max(n[1] for n in notes)
    cols = min(width, int((max(n[3] for n in notes) - t0) // step) + 1)
    rows = []
    for pitch in range(hi, lo - 1, -1):
        line = [" "] * cols
        for who, p, start, end in notes:
            if p != pitch:
                continue
            a = int((start - t0) // step)
            b = max(a + 1, int(round((end - t0) / step)))
            for c in range(a, min(b, cols)):
                line[c] = ("o" if who == "human" else "#") if c == a else "-"
        bar_marks = "".join(
            "|" if (c * step) % (4 * tk.TICKS_PER_QUARTER) == 0 and ch == " " else ch
            for c, ch in enumerate(line)
        )
        rows.append(f"{note_name(pitch):>4} {bar_marks}")
    rows.append("     o = your call, # = improv's answer, one column = a sixteenth")
    return "\n".join(rows)


def machine_notes(sent, clock) -> list[tuple[str, int, float, float]]:
    open_, out = {}, []
    for t, msg in sent:
        if msg.type not in ("note_on", "note_off"):
            continue
        tick = clock.time_to_tick(t)
        if msg.type == "note_on" and msg.velocity > 0:
            open_[msg.note] = tick
        elif msg.note in open_:
            out.append(("machine", msg.note, open_.pop(msg.note), tick))
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    me = prog or "improv demo"
    ap = OneLineParser(
        prog=me, description=__doc__.split("\n\n")[0],
        **with_examples(
            "improv demo                # the built-in call; both parts to improv-demo.mid",
            "improv demo --call my-phrase.mid --preset 2 --out answer.mid"))
    ap.add_argument("--call", type=Path, default=None, help="a .mid to play as the call")
    ap.add_argument("--out", type=Path, default=Path("improv-demo.mid"),
                    help="where to write the call and the answer (default improv-demo.mid)")
    add_rig_arguments(ap)
    args = ap.parse_args(argv)
    args.record = args.out
    from improv.live.recording import RecordingError

    try:
        check_record_path(args.out, "--out")
        num, den = parse_meter(args.meter)
        call = load_call(args.call, Meter(num, den).bar_ticks)
        output = Collector()
        rig = build_rig(args, output)
    except (JamError, RecordingError, ValueError, OSError) as e:
        teardown.drain()
        return fail(me, e)
    session, clock = rig.session, rig.clock
    responded = threading.Event()
    session.on_state = lambda s: responded.set() if s == State.RESPONDING else None
    try:
        session.start()
        start = clock.next_bar(clock.now_tick() + 12)
        print(f"improv demo: playing a {len(call)}-note call at {clock.bpm:.0f} BPM "
              f"({session.preset.name} preset)...", flush=True)
        play_call(session, clock, call, start)
        limit = time.monotonic() + (args.seconds or 60.0)
        while time.monotonic() < limit and not session.error:
            snap = session.snapshot()
            if responded.is_set() and snap.state in (State.IDLE, State.LISTENING):
                break
            time.sleep(0.02)
        time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        rig.close()
        teardown.drain()
    human = [("human", p, start + s, start + s + n) for p, s, n in call]
    machine = machine_notes(output.sent, clock)
    print(piano_roll(human + machine))
    if session.responses:
        r = session.responses[0]
        first = r.get("first_note_deadline")
        if first is not None:
            print(f"answer planned at bar line {r['start_tick'] / clock.bar_ticks + 1:.0f}, "
                  f"first note {1000 * (first - r['planned_time']):+.1f} ms from it")
    print(f"{len(machine)} notes in the answer; written to {args.out}")
    if session.error is not None:
        print(f"improv demo: the session failed: {session.error}", file=sys.stderr)
        return 1
    return 0 if machine else 1


if __name__ == "__main__":
    sys.exit(main())
