"""A JACK player for the UI-kill test, run in its own process (like ``jack_player.py``).

It plays a phrase into a running `improv jam`, waits for the answer's first note, kills the
jam's UI process with SIGKILL ``KILL_AFTER`` seconds into the answer, lets the answer play on
until the jam has been quiet for a while, then stops the jam with SIGTERM and writes what it
heard (arrival times on the shared monotonic clock) as JSON.

    python tests/ui_kill_player.py TAG JAM_PID OUT.json   (then the UI's pid on stdin)

It starts with the jam, its ear open for the jam's clock Start; its keyboard opens and
plays once the test writes the UI's pid on stdin (the UI has drawn its first frame).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import mido
from jack_player import _bytes, connect  # same folder: run as a script, the folder is on the path

KILL_AFTER = 1.0  # seconds into the answer (of 4 s): notes before and after to compare
QUIET = 2.5  # seconds without a note event: the answer is over


def notes(inp) -> list[tuple[float, list[int]]]:
    return [(t, b) for t, b in _bytes(inp) if b[0] & 0xE0 == 0x80]


def main(tag: str, jam_pid: int, out_path: str) -> int:
    ui: list[int] = []
    ports = connect(tag, go=lambda: ui.append(int(sys.stdin.readline())))
    if ports is None:
        return 2
    inp, out = ports
    ui_pid = ui[0]
    result: dict = {"killed": None}
    try:
        deadline = time.monotonic() + 10
        while not any(b == [0xFA] for _, b in _bytes(inp)) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        for pitch in (60, 62, 64, 65, 67, 65, 64, 62):
            out.send(mido.Message("note_on", note=pitch, velocity=90))
            time.sleep(0.2)
            out.send(mido.Message("note_off", note=pitch, velocity=0))
            time.sleep(0.05)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(b[0] & 0xF0 == 0x90 and b[2] > 0 for _, b in _bytes(inp)):
                break
            time.sleep(0.01)
        time.sleep(KILL_AFTER)
        os.kill(ui_pid, signal.SIGKILL)
        result["killed"] = time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            heard_notes = notes(inp)
            if heard_notes and time.monotonic() - heard_notes[-1][0] > QUIET:
                break
            time.sleep(0.05)
        result["stop_sent"] = time.monotonic()
        os.kill(jam_pid, signal.SIGTERM)
        time.sleep(2.0)
    finally:
        inp.close()
        out.close()
    result["received"] = _bytes(inp)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
