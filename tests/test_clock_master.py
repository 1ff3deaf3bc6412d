"""bench/clock_master.py: the jittered master the clock-follow bench measures against."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from improv.live.clock import now

ROOT = Path(__file__).resolve().parents[1]
TICK = 60.0 / 120 / 24


def test_the_master_sends_its_jittered_pulses_and_writes_them_when_stopped(jack_backend,
                                                                          tmp_path):
    ear = jack_backend.open_input("master ear", virtual=True)
    out = tmp_path / "sent.json"
    t0 = now() + 0.8
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.clock_master", "--to", "master ear", "--t0", repr(t0),
         "--pulses", "1000", "--jitter-ms", "1", "--seed", "5", "--out", str(out)], cwd=ROOT)
    try:
        time.sleep(0.8 + 40 * TICK)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    heard = [m.type for m in ear.iter_pending()]
    ear.close()
    sent = np.array(json.loads(out.read_text()))
    assert 20 < len(sent) < 1000  # stopped by the signal, not by running out of pulses
    ideal, at = sent[:, 0], sent[:, 1]
    assert np.allclose(ideal, t0 + np.arange(len(sent)) * TICK, rtol=0, atol=1e-9)
    assert np.abs(at - ideal).max() < 0.006  # +-1 ms asked, a few ms of a busy machine
    assert np.abs(at - ideal).max() > 0.0002  # the jitter is there
    assert heard[0] == "start" and heard.count("clock") >= len(sent) - 2
