"""A JACK client for the end-to-end test, run in its own process.

It plays a phrase into a running `improv jam`, records what comes out (with its arrival
time on the monotonic clock, which processes share), stops the jam with SIGTERM and
writes the record as JSON. In its own process its JACK clients share nothing with the
test runner (threads, the GIL, torch's pools), as a keyboard and a synth would not.

    python tests/jack_player.py TAG JAM_PID OUT.json
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import mido


class Heard:
    """The jam's output as it arrives, with no Python in JACK's thread.

    rtmidi queues each message with a JACK time stamp (queue mode, no callback) and a
    thread here polls the queue: a Python callback would take the GIL in JACK's real-time
    thread, and on a busy machine JACK then drops or repeats that cycle's messages (a
    note-on heard twice). Stamps go onto the monotonic clock by the smallest poll delay.
    """

    def __init__(self, port_part: str) -> None:
        import rtmidi

        self.rt = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="e2e-heard",
                                queue_size_limit=1 << 16)
        self.rt.ignore_types(sysex=True, timing=False, active_sense=True)
        i = next(k for k, n in enumerate(self.rt.get_ports()) if port_part in n)
        self.rt.open_port(i, "heard")
        self.raw: list[tuple[float, float, list[int]]] = []  # JACK s, polled at, bytes
        self.quit = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        jack_s = 0.0
        while not self.quit.is_set():
            item = self.rt.get_message()
            if item is None:
                time.sleep(0.0005)
                continue
            jack_s += item[1]
            self.raw.append((jack_s, time.monotonic(), list(item[0])))

    def messages(self) -> list[tuple[float, list[int]]]:
        raw = list(self.raw)
        if not raw:
            return []
        offset = min(p - j for j, p, _ in raw)
        return [(j + offset, b) for j, _, b in raw]

    def close(self) -> None:
        self.quit.set()
        self.thread.join(timeout=1.0)
        self.rt.close_port()


def main(tag: str, jam_pid: int, out_path: str) -> int:
    be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")

    def find(names, part):
        return next((n for n in names() if part in n), None)

    deadline = time.monotonic() + 20
    while not (find(be.get_input_names, f"improv out {tag}")
               and find(be.get_output_names, f"improv in {tag}")):
        if time.monotonic() > deadline:
            print("the jam's ports never appeared", file=sys.stderr)
            return 2
        time.sleep(0.05)
    inp = Heard(f"improv out {tag}")
    out = be.open_output(find(be.get_output_names, f"improv in {tag}"))
    result = {"heard_start": False, "answered": False}
    try:
        deadline = time.monotonic() + 10
        while not any(b == [0xFA] for _, b in inp.messages()) and time.monotonic() < deadline:
            time.sleep(0.02)
        result["heard_start"] = any(b == [0xFA] for _, b in inp.messages())
        time.sleep(0.3)
        for pitch in (60, 62, 64, 65, 67, 65, 64, 62):
            out.send(mido.Message("note_on", note=pitch, velocity=90))
            time.sleep(0.2)
            out.send(mido.Message("note_off", note=pitch, velocity=0))
            time.sleep(0.05)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(b[0] & 0xF0 == 0x90 and b[2] > 0 for _, b in inp.messages()):
                result["answered"] = True
                break
            time.sleep(0.02)
        time.sleep(1.0)  # let the answer play a while, then stop the jam mid-answer
        result["stop_sent"] = time.monotonic()
        os.kill(jam_pid, signal.SIGTERM)
        time.sleep(3.0)  # the test notes when the jam exits; anything later would be a bug
    finally:
        inp.close()
        out.close()
    result["received"] = inp.messages()
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
