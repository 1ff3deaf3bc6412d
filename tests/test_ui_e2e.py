"""The UI in its own process, end to end: `improv jam` with its stage UI under a pseudo-terminal
(160x48, as a player would have it), a JACK client playing. The UI process is killed with
SIGKILL in the middle of the answer: the answer plays on to its end, every note with its
note-off, on the grid of the jam's own MIDI clock, and the jam says once that it plays on
without a UI."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mido
import pytest
from helpers import wait_for

from bench.terminal import Pty

BPM = 120.0
TICK_S = 60.0 / BPM / 24  # one MIDI clock pulse; every machine note sits on a tick


def children(pid: int) -> list[tuple[int, str]]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            out.append((int(k), Path(f"/proc/{k}/cmdline").read_text().replace("\0", " ")))
        except OSError:
            pass
    return out


def grid_errors(events, pulses) -> list[float]:
    """How far each event lies from the nearest MIDI clock pulse, seconds."""
    out = []
    for t, _ in events:
        out.append(min(abs(t - p) for p in pulses))
    return out


@pytest.mark.jack
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty + /proc")
def test_killing_the_ui_mid_answer_costs_no_note_and_no_timing(jack_backend, tiny_model_dir,
                                                               tmp_path):
    tag = f"ui{os.getpid()}"
    runtime = tempfile.mkdtemp(prefix="improv-rt-")  # short: a socket path has ~100 bytes
    cmd = [
        sys.executable, "-m", "improv", "jam", "--backend", "jack", "--virtual",
        "--in", f"improv in {tag}", "--out", f"improv out {tag}", "--model", str(tiny_model_dir),
        "--bpm", str(BPM), "--seconds", "60", "--seed", "3", "--clock-out",
        "--record", str(tmp_path / "set.mid"),
        "--set", "silence_beats=1", "--set", "response_bars=2", "--set", "humanize_ms=0",
        "--set", "swing=0", "--set", "response_start=beat", "--set", "density=0.5",
    ]
    env = dict(os.environ, JACK_NO_START_SERVER="1", IMPROV_RUNTIME_DIR=runtime,
               TERM="xterm-256color", COLUMNS="160", LINES="48")
    term = Pty(160, 48)
    proc = subprocess.Popen(cmd, stdin=term.slave, stdout=term.slave, stderr=term.slave, env=env,
                            start_new_session=True)
    os.close(term.slave)
    # The player starts with the jam (its ear open for the jam's clock Start, on the jam's
    # next bar line) and plays once told the UI's pid, after the UI's first frame.
    player = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ui_kill_player.py")), tag,
         str(proc.pid), str(tmp_path / "heard.json")], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ui = wait_for(lambda: [pid for pid, c in children(proc.pid) if " improv ui " in c]
                      or proc.poll() is not None, 40, "the jam's UI process")
        assert proc.poll() is None, term.text()
        ui_pid = ui[0]
        wait_for(lambda: "latency" in term.text(), 30, "the UI's first frame")
        player.stdin.write(f"{ui_pid}\n")
        player.stdin.flush()
        proc.wait(timeout=90)
        exited = time.monotonic()
        player_said, _ = player.communicate(timeout=30)
    finally:
        for p in (proc, player):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(runtime, ignore_errors=True)
    time.sleep(0.2)
    output = term.text()
    tail = output[-3000:]
    assert player.returncode == 0, player_said
    assert proc.returncode == 0, tail
    heard = json.loads((tmp_path / "heard.json").read_text())
    assert heard["killed"] is not None, player_said
    killed = heard["killed"]
    assert output.count("the stage UI was killed (SIGKILL); the set plays on") == 1, tail
    got = [(t, mido.Message.from_bytes(b)) for t, b in heard["received"]]
    notes = [(t, m) for t, m in got if m.type in ("note_on", "note_off")]
    ons = [(t, m) for t, m in notes if m.type == "note_on" and m.velocity > 0]
    assert ons and ons[0][0] < killed, f"no answer before the kill:\n{tail}"
    after = [(t, m) for t, m in notes if t > killed + 0.01]
    assert any(m.type == "note_on" and m.velocity > 0 for _, m in after), (
        "the answer stopped when the UI was killed")
    # Every note-on has its note-off, in order, per key, and nothing comes after the jam.
    sounding: set[int] = set()
    for _, m in notes:
        if m.type == "note_on" and m.velocity > 0:
            assert m.note not in sounding, f"key {m.note} struck twice without a note-off"
            sounding.add(m.note)
        else:
            sounding.discard(m.note)
    assert not sounding, f"stuck notes: {sorted(sounding)}"
    assert all(t <= exited for t, _ in got), "messages arrived after the jam exited"
    # On time: the answer's notes sit on the jam's own clock grid (a pulse a tick), after the
    # kill as before it. A note the kill made late would sit a pulse or more off (20.8 ms);
    # arrivals are quantized to JACK's period (1.33 ms), and the box is shared.
    start_i = next(i for i, (_, m) in enumerate(got) if m.type == "start")
    pulses = [t for t, m in got[start_i:] if m.type == "clock"]
    answer = [(t, m) for t, m in notes if t >= ons[0][0] - 0.001]
    before = grid_errors([e for e in answer if e[0] <= killed], pulses)
    later = grid_errors([e for e in answer if e[0] > killed], pulses)
    print(f"grid error before the kill: median {statistics.median(before) * 1e3:.2f} ms, "
          f"max {max(before) * 1e3:.2f} ms over {len(before)}; "
          f"after: median {statistics.median(later) * 1e3:.2f} ms, max {max(later) * 1e3:.2f} ms "
          f"over {len(later)}")
    assert max(later) < 0.5 * TICK_S, f"late notes after the kill: {sorted(later)[-5:]}"
    # and as close as before it (a stalled session would put whole pulses between them)
    assert statistics.median(later) <= statistics.median(before) + 0.003
    # To its end: the session finished the answer by itself (its state moved on before the
    # jam was stopped), and the notes stayed within the answer's two bars
    bars = 2 * 4 * 60.0 / BPM
    print(f"answer: {len(ons)} notes over {answer[-1][0] - ons[0][0]:.2f} s")
    assert answer[-1][0] - ons[0][0] <= bars + 0.05, "the answer ran past its two bars"
    # Headless lines exist only once the UI is lost; stdout's and stderr's printers are two
    # threads, so "the set plays on" (stderr) may land after the first state line (stdout).
    headless = output[output.index("latency") if "latency" in output else 0:]
    assert re.search(r"\[ *[\d.]+\] state: responding.*\[ *[\d.]+\] state: (idle|listening)",
                     output, re.S), headless[-2000:]
    assert (tmp_path / "set.mid").exists()
