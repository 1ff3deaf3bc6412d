"""A JACK client for the end-to-end test, run in its own process.

It plays a phrase into a running `improv jam`, records what comes out (with its arrival
time on the monotonic clock, which processes share), stops the jam with SIGTERM and
writes the record as JSON. In its own process its JACK clients share nothing with the
test runner (threads, the GIL, torch's pools), as a keyboard and a synth would not.

    python tests/jack_player.py TAG JAM_PID OUT.json [KILL]

With KILL it ends the jam with SIGKILL instead (the session process dies mid-answer; the
jam's real-time I/O process must end every note on its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mido


def heard(port_part: str):
    """The jam's output as it arrives, with no Python in JACK's thread: the trading bench's
    Listener (rtmidi's queue polled from a thread; a mido callback in JACK's real-time
    thread heard a note-on twice on a busy machine)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench/
    from bench.trading import Listener

    return Listener(port_part, client="e2e-heard")


class Keys:
    """The player's keyboard: one rtmidi client patched into the jam's input."""

    made = 0

    def __init__(self, target: str) -> None:
        import rtmidi

        Keys.made += 1  # a client name of its own: the probe patches it by name
        self.client = f"e2e-keys-{os.getpid()}-{Keys.made}"
        self._rt = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=self.client)
        ports = self._rt.get_ports()
        self._rt.open_port(next(i for i, n in enumerate(ports) if target in n), "keys")

    def send(self, msg: mido.Message) -> None:
        self._rt.send_message(msg.bytes())

    def probe(self, timeout: float = 10.0) -> bool:
        """Whether this client's messages flow: patch it into a listener of our own too and
        send until that hears it (a JACK client opened among others may miss cycles: the
        test must test improv, not that race)."""
        import rtmidi

        ear = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=f"{self.client}-probe")
        ear.open_virtual_port("in")
        try:
            subprocess.run(["jack_connect", f"{self.client}:keys", f"{self.client}-probe:in"],
                           check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self._rt.send_message([0xB0, 3, 0])  # a CC the jam has no use for
                time.sleep(0.02)
                if ear.get_message() is not None:
                    return True
            return False
        finally:
            ear.close_port()
            ear.delete()

    def close(self) -> None:
        self._rt.close_port()
        self._rt.delete()


def connect(tag: str, go=None):
    """(what the jam plays, an output into the jam) once its ports appear; None after 20 s.
    One long-lived client per direction looks for the ports: a fresh client every 50 ms
    would churn the JACK graph while the jam's clients start. The ear opens at once (the
    jam's clock Start comes on its next bar line); ``go()``, when given, is waited for
    before the keyboard opens (the test says on stdin when the jam is listening)."""
    import rtmidi

    sources = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="e2e-lister")
    sinks = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="e2e-lister")
    try:
        deadline = time.monotonic() + 20
        while not (any(f"improv out {tag}" in n for n in sources.get_ports())
                   and any(f"improv in {tag}" in n for n in sinks.get_ports())):
            if time.monotonic() > deadline:
                print("the jam's ports never appeared", file=sys.stderr)
                return None
            time.sleep(0.05)
    finally:
        sources.delete()
        sinks.delete()
    ear = heard(f"improv out {tag}")
    if go is not None:
        go()
    keys = Keys(f"improv in {tag}")
    if not keys.probe():
        print("the player's own keyboard client never ran (JACK)", file=sys.stderr)
        ear.close()
        return None
    return ear, keys


def _bytes(inp) -> list[tuple[float, list[int]]]:
    return [(t, m.bytes()) for t, m in inp.copy()]


def _sounding(got) -> set[int]:
    keys: set[int] = set()
    for _, b in got:
        if b[0] & 0xF0 == 0x90 and b[2] > 0:
            keys.add(b[1])
        elif b[0] & 0xF0 in (0x80, 0x90):
            keys.discard(b[1])
    return keys


def main(tag: str, jam_pid: int, out_path: str, how: str = "TERM") -> int:
    ports = connect(tag, go=sys.stdin.readline)
    if ports is None:
        return 2
    inp, out = ports
    result = {"heard_start": False, "answered": False}
    try:
        deadline = time.monotonic() + 10
        while not any(b == [0xFA] for _, b in _bytes(inp)) and time.monotonic() < deadline:
            time.sleep(0.02)
        result["heard_start"] = any(b == [0xFA] for _, b in _bytes(inp))
        time.sleep(0.3)
        for pitch in (60, 62, 64, 65, 67, 65, 64, 62):
            out.send(mido.Message("note_on", note=pitch, velocity=90))
            time.sleep(0.2)
            out.send(mido.Message("note_off", note=pitch, velocity=0))
            time.sleep(0.05)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(b[0] & 0xF0 == 0x90 and b[2] > 0 for _, b in _bytes(inp)):
                result["answered"] = True
                break
            time.sleep(0.02)
        time.sleep(1.0)  # let the answer play a while, then stop the jam mid-answer
        if how == "KILL":  # mid-note: kill while one of the answer's notes sounds
            deadline = time.monotonic() + 8
            while not _sounding(_bytes(inp)) and time.monotonic() < deadline:
                time.sleep(0.005)
        result["stop_sent"] = time.monotonic()
        os.kill(jam_pid, signal.SIGKILL if how == "KILL" else signal.SIGTERM)
        time.sleep(3.0)  # the test notes when the jam exits; anything later would be a bug
    finally:
        inp.close()
        out.close()
    result["received"] = _bytes(inp)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2], int(sys.argv[2]), *sys.argv[3:5]))
