"""The clock-follow benchmark: `improv jam --clock midi` against a jittered master and
against jack_midi_clock, the answer's notes read against the master's grid.

This module owns the masters and the grid each is read against. ``follow_run``:
``improv jam --clock midi --no-tui`` following :mod:`bench.clock_master` (a process of its
own) that sends 24 pulses a beat, each ``+-jitter_ms`` off its ideal time (uniform, seeded),
as a master writing between JACK's cycles does; or following ``jack_midi_clock`` (sample
accurate, JACK transport rolling). Answer notes against the master's ideal grid: for
our master the times it aimed at; for jack_midi_clock the line through its pulses as
heard here within half a second of each note, placed near their latest arrivals (a
pulse in a cycle's first frame is stamped on time, the others up to a period early).
The jam, its pseudo-terminal, the calls and the listener are :mod:`bench.isolation`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.isolation import (
    DENSE,
    PPQ,
    LiveError,
    _calls,
    _faults,
    _jam_cmd,
    _note_times,
    _retrying,
    _Run,
    fit_line,
    fit_origin,
    grid_offsets,
    grid_residuals,
    latency_of,
    live,
)
from improv.live.clock import now
from improv.live.ports import get_backend

ROOT = Path(__file__).resolve().parents[1]


def follow_run(model: Path, seconds: float, master: str = "jitter", jitter_ms: float = 1.0,
               bpm: float = 120.0, log=print, extra: tuple[str, ...] = ()) -> dict:
    """A jam following MIDI clock: our jittered master, or ``master="jack_midi_clock"``;
    ``extra``: more ``improv jam`` arguments (``--clock-offset-ms``)."""
    return _retrying(lambda k: _follow_once(model, seconds, master, jitter_ms, bpm, log, k,
                                            extra), "clock follow", log)


def _follow_once(model: Path, seconds: float, master: str, jitter_ms: float, bpm: float, log,
                 k: int, extra: tuple[str, ...] = ()) -> dict:
    backend = get_backend("jack")
    tick_s = 60.0 / bpm / PPQ
    tag = f"fol{os.getpid()}{master[0]}{k}"
    run = _Run(_jam_cmd(model, tag, bpm, seconds + 60, DENSE, ["--clock", "midi", *extra]),
               tag, ui=False)
    sent: list[tuple[float, float]] = []  # (ideal, actual send)
    mclk = master_proc = None
    with tempfile.TemporaryDirectory() as tmp:
        sent_file = Path(tmp) / "sent.json"
        try:
            run.connect(backend, clock_from_jam=False)
            if master == "jitter":  # a process of its own, as a real master is
                master_proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.clock_master", "--to", f"improv in {tag}",
                     "--t0", repr(now() + 1.0), "--bpm", f"{bpm:g}",
                     "--pulses", str(int((seconds + 40) / tick_s)),
                     "--jitter-ms", f"{jitter_ms:g}", "--seed", "11", "--out", str(sent_file)],
                    cwd=ROOT)
            else:
                mclk = _start_jack_midi_clock(bpm, [f"improv in {tag}", f"bench-iso-{tag}"])
            time.sleep(2.0)  # the follower locks on
            answered = _calls(run, seconds, backend, log)
            snap = run.tap.snapshot
            t_exit = run.stop()
        finally:
            if master_proc is not None:
                live.end_process(master_proc)  # on SIGTERM it writes what it sent, then exits
            if mclk is not None:
                _stop_jack_midi_clock(mclk)
            run.close()
        if master_proc is not None:
            try:
                sent = [tuple(x) for x in json.loads(sent_file.read_text())]
            except (OSError, ValueError) as e:
                raise LiveError(f"the clock master wrote no pulses ({e})") from None
            if not sent:
                raise LiveError("the clock master sent no pulses")
    msgs = run.rec.copy()
    notes, ons = _note_times(msgs, t_exit)
    if not notes:
        raise LiveError("no answer notes arrived")
    out = {"answers": answered, "notes": ons, "messages": len(notes), "master": master,
           "jam_latency": latency_of(snap), "exit_code": run.proc.returncode,
           **_faults(msgs)}
    if master == "jitter":
        ideal = np.array([i for i, _ in sent])
        actual = np.array([t for _, t in sent])
        origin = float(ideal[0])
        out["master_send_minus_ideal_ms"] = (actual - ideal) * 1e3
        out["jitter_ms"] = jitter_ms
        out["offset_ms"] = grid_offsets(notes, origin, tick_s) * 1e3
    else:
        heard = np.array([t for t, m in msgs if m.type == "clock" and t < t_exit])
        gaps = np.diff(heard) * 1e3
        out["pulse_gap_ms"] = {"min": float(gaps.min()), "median": float(np.median(gaps)),
                               "max": float(gaps.max())}
        out["offset_ms"], spread = local_grid_offsets(notes, heard, tick_s)
        out["pulse_spread_ms"] = float(np.percentile(spread, 99))
    return out


def local_grid_offsets(times, pulses, tick_s: float, half_s: float = 0.5,
                       q: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Arrival - deadline against a grid fitted to the pulses within ``half_s`` of each
    arrival (a line through them, placed on their ``q``-th percentile residual), for a
    master whose grid is not one straight line in our time (JACK's dummy driver's frame
    clock against the system clock). ``q`` 90, not the latest arrival: a pulse that one
    late JACK cycle delayed must not move the grid of the second around it (the price: the
    grid sits a tenth of a period, 0.13 ms, early). Also each fit's residual spread (ms)."""
    p = np.asarray(pulses, dtype=np.float64)
    offs, spreads = [], []
    for t in np.asarray(times, dtype=np.float64):
        near = p[(p > t - half_s) & (p < t + half_s)]
        if near.size < 8:
            continue
        a, b = fit_line(near, tick_s)
        origin = fit_origin(near, a, b, q)
        offs.append(float(grid_offsets([t], origin, b)[0]))
        spreads.append(float(np.ptp(grid_residuals(near, origin, b))))
    return np.array(offs) * 1e3, np.array(spreads) * 1e3


def _jack_port(part: str) -> str:
    done = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=5)
    found = [x.strip() for x in done.stdout.splitlines() if part in x]
    if not found:
        raise LiveError(f"no JACK port like {part!r}")
    return found[0]


def _start_jack_midi_clock(bpm: float, targets: list[str]) -> subprocess.Popen:
    exe = shutil.which("jack_midi_clock")
    if exe is None:
        raise LiveError("jack_midi_clock is not installed (apt install jack-midi-clock)")
    proc = subprocess.Popen([exe, "-b", f"{bpm:g}", "-B"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    out = live._wait(lambda: next((x for x in subprocess.run(
        ["jack_lsp"], capture_output=True, text=True, timeout=5).stdout.splitlines()
        if x.startswith("jack_midi_clock:")), None), 10.0, "jack_midi_clock's port")
    for part in targets:
        subprocess.run(["jack_connect", out.strip(), _jack_port(part)], check=True, timeout=5)
    subprocess.run(["jack_transport"], input="locate 0\nplay\nquit\n", text=True,
                   capture_output=True, timeout=10)
    return proc


def _stop_jack_midi_clock(proc: subprocess.Popen) -> None:
    with contextlib.suppress(Exception):
        subprocess.run(["jack_transport"], input="stop\nquit\n", text=True,
                       capture_output=True, timeout=10)
    live.end_process(proc)


