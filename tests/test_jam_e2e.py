"""End to end over a real MIDI server: `improv jam` in its own process, a JACK client playing.

The test plays a phrase into `improv jam --no-tui --backend jack --virtual` and records what
comes out of it, MIDI clock included (``--clock-out``), so the beat grid of the answer can be
checked against the clock the jam itself sends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import mido
import pytest

from improv.ports import input_names

BPM = 120.0


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.jack
def test_jam_answers_on_the_beat_and_ends_every_note(jack_backend, tiny_model_dir, tmp_path):
    tag = f"e2e{os.getpid()}"
    cmd = [
        sys.executable, "-m", "improv", "jam", "--no-tui", "--backend", "jack", "--virtual",
        "--in", f"improv in {tag}", "--out", f"improv out {tag}", "--model", str(tiny_model_dir),
        "--bpm", str(BPM), "--seconds", "40", "--seed", "3", "--clock-out",
        "--record", str(tmp_path / "set.mid"),
        "--set", "silence_beats=1", "--set", "response_bars=2", "--set", "humanize_ms=0",
        "--set", "swing=0", "--set", "response_start=beat", "--set", "density=0.5",
    ]
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    received: list[tuple[float, mido.Message]] = []
    lock = threading.Lock()

    def on_message(msg):
        with lock:
            received.append((time.monotonic(), msg))

    inp = out = None
    try:
        out_name = wait_for(
            lambda: next((n for n in input_names(jack_backend) if f"improv out {tag}" in n), None),
            20.0, "the jam's output port")
        inp = jack_backend.open_input(out_name, callback=on_message)
        in_name = next(n for n in jack_backend.get_output_names() if f"improv in {tag}" in n)
        out = jack_backend.open_output(in_name)
        wait_for(lambda: any(m.type == "start" for _, m in received), 10.0, "MIDI clock start")
        time.sleep(0.3)
        for pitch in (60, 62, 64, 65, 67, 65, 64, 62):
            out.send(mido.Message("note_on", note=pitch, velocity=90))
            time.sleep(0.2)
            out.send(mido.Message("note_off", note=pitch, velocity=0))
            time.sleep(0.05)
        try:
            wait_for(lambda: any(m.type == "note_on" and m.velocity > 0 for _, m in received),
                     15.0, "the answer's first note")
        except AssertionError:
            proc.kill()
            raise AssertionError(f"no answer; the jam said:\n{proc.communicate()[0]}") from None
        time.sleep(1.0)  # let the answer play a while, then stop the jam mid-answer
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
        exited = time.monotonic()
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for port in (inp, out):
            if port is not None:
                port.close()
    assert proc.returncode == 0, output
    with lock:
        got = list(received)
    notes = [(t, m) for t, m in got if m.type in ("note_on", "note_off")]
    ons = [(t, m) for t, m in notes if m.type == "note_on" and m.velocity > 0]
    assert ons, f"no answer came out of the jam:\n{output}"
    # Every note-on has its note-off, in order, per key.
    sounding: set[int] = set()
    for _, m in notes:
        if m.type == "note_on" and m.velocity > 0:
            assert m.note not in sounding, f"key {m.note} struck twice without a note-off"
            sounding.add(m.note)
        else:
            sounding.discard(m.note)
    assert not sounding, f"stuck notes after stop: {sorted(sounding)}\n{output}"
    assert all(t <= exited for t, _ in got), "messages arrived after the jam exited"
    # The answer starts on a beat of the jam's own MIDI clock (24 pulses per beat after Start).
    start_i = next(i for i, (_, m) in enumerate(got) if m.type == "start")
    pulses = [t for t, m in got[start_i:] if m.type == "clock"]
    t_first = ons[0][0]
    k = min(range(len(pulses)), key=lambda i: abs(pulses[i] - t_first))
    assert k % 24 == 0, f"first answer note is {k % 24} ticks off the beat"
    assert abs(pulses[k] - t_first) < 0.02
    assert (tmp_path / "set.mid").exists()
    assert "state: responding" in output
