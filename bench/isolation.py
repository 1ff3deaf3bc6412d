"""Real-time isolation under a stopwatch (issue 11): a real `improv jam` through JACK.

* ``isolation_run``: ``improv jam`` (its I/O process, the default; or ``--in-process``) with
  its stage UI drawing under a 160x48 pseudo-terminal, a busy Python process pinned to the
  other core, and dense answers (density 1, short notes, no humanize, no swing). A player
  here plays a short call, waits for the answer to end, plays the next. Every answer
  message's arrival at a JACK listener (:class:`bench.trading.Listener`, rtmidi's queue) is
  set against its deadline: the tick of the jam's own MIDI clock grid it was scheduled on.
  The grid is fitted to the jam's clock pulses as heard here, on their earliest arrivals
  (a pulse reaches us in the first JACK cycle after it was sent, 0-1.33 ms later: the
  quickest ones stand for the send time), so the figure includes JACK's period, as the
  issue's bar asks. The jam's own figures (the scheduler's send error p99, its late
  count, the decode step's median and p99) come from its session API socket, the one
  ``improv ui`` attaches to: the last snapshot before the jam is told to stop.
* the jam, its pseudo-terminal, the calls and the grid helpers are shared with
  :mod:`bench.clock_follow` (``improv jam --clock midi`` against a jittered master and
  against jack_midi_clock).

All times are seconds of ``improv.live.clock.now`` (system-wide on Linux). Part of the
bench package (bench/suite.py runs it as the ``isolation``, ``jam_decode`` and
``clock_follow`` benchmarks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mido
import numpy as np

from bench.common import cpu_steal_s, load_bench
from bench.terminal import Pty
from improv.live.clock import now
from improv.live.ports import get_backend, input_names, match_port

live = load_bench("live")
trading = load_bench("trading")
LiveError = live.LiveError

PPQ = 24
EARLY_S = 0.002  # an arrival this much before a tick still belongs to that tick
LATE_MS = 5.0  # an arrival this much after its deadline counts as late here
# Dense answers: busy, short notes, nothing moved off the grid on purpose.
DENSE = ("density=1", "max_note_beats=0.25", "max_polyphony=4", "response_bars=4",
         "silence_beats=1", "predict_handover=false", "response_start=beat", "humanize_ms=0",
         "swing=0")
CALL = live.CALL  # 8 notes of 0.2 s with 0.05 s gaps


# --- pure helpers (tested) ---------------------------------------------------------------------


def grid_residuals(times, t0: float, tick_s: float) -> np.ndarray:
    """Each pulse's time minus its tick's time on a grid from ``t0`` (pulses indexed by time,
    so a lost pulse cannot shift the grid)."""
    t = np.asarray(times, dtype=np.float64)
    idx = np.round((t - t0) / tick_s)
    return t - (t0 + idx * tick_s)


def fit_origin(times, t0: float, tick_s: float, q: float) -> float:
    """The grid's origin from pulse arrivals: their ``q``-th percentile residual from ``t0``.

    ``q`` low (0.5): the earliest arrivals stand for the send time (pulses sent by a
    thread reach a JACK client in the next cycle); ``q`` high: the latest (pulses placed
    sample-accurately inside a cycle are stamped at its start, up to a period early).
    """
    if len(times) == 0:
        raise LiveError("no MIDI clock pulses to fit a grid to")
    return t0 + float(np.percentile(grid_residuals(times, t0, tick_s), q))


def fit_line(times, tick_s: float) -> tuple[float, float]:
    """Least squares ``t = a + b * index`` through pulses; each gap counted in whole ticks
    of ``tick_s`` (a lost pulse is a gap of two), so a master a few percent off its nominal
    tempo is still indexed right over any span."""
    t = np.asarray(times, dtype=np.float64)
    idx = np.concatenate([[0.0], np.cumsum(np.maximum(1, np.round(np.diff(t) / tick_s)))])
    b, a = np.polyfit(idx, t - t[0], 1)
    return float(t[0] + a), float(b)


def grid_offsets(times, origin: float, tick_s: float, early_s: float = EARLY_S) -> np.ndarray:
    """Each arrival minus its deadline, seconds: the latest tick at or before the arrival
    (``early_s`` of slack), so a note late by more than half a tick is not taken for an
    early one of the next tick."""
    t = np.asarray(times, dtype=np.float64)
    k = np.floor((t - origin + early_s) / tick_s)
    return t - (origin + k * tick_s)


def key_faults(msgs) -> tuple[list[tuple[int, int]], int]:
    """As a synth hears the notes: keys still down at the end (a note-off ends a key
    however often it was struck), and note-ons on a key already down (double strikes)."""
    down: set[tuple[int, int]] = set()
    doubles = 0
    for _, m in msgs:
        if m.type == "note_on" and m.velocity > 0:
            doubles += (m.channel, m.note) in down
            down.add((m.channel, m.note))
        elif m.type in ("note_on", "note_off"):
            down.discard((m.channel, m.note))
    return sorted(down), doubles


def latency_of(snapshot: dict | None) -> dict:
    """The jam's latency figures from a session API snapshot (empty without one)."""
    return dict((snapshot or {}).get("latency") or {})


# --- a jam under a pseudo-terminal, its API socket, a hog --------------------------------------


class ApiTap:
    """A client of the jam's session API socket: the latest snapshot and the log lines."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        live._wait(lambda: os.path.exists(path), timeout, "the jam's API socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall((json.dumps({"hello": {"pid": os.getpid()}}) + "\n").encode())
        self.snapshot: dict | None = None
        self.states: list[tuple[float, str]] = []
        self.logs: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "snapshot" in msg:
                    self.snapshot = msg["snapshot"]
                    state = self.snapshot.get("state")
                    if not self.states or self.states[-1][1] != state:
                        self.states.append((now(), state))
                for x in msg.get("log", []):
                    self.logs.append((now(), x))

    def state(self) -> str | None:
        return self.states[-1][1] if self.states else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def cpu_hog(on: bool = True):
    """A busy Python process, pinned to the last core (the other one on a 2-core machine)."""
    if not on:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    cpu = (os.cpu_count() or 1) - 1
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(proc.pid, {cpu})
    try:
        yield cpu
    finally:
        proc.kill()
        proc.wait()


def _jam_cmd(model: Path, tag: str, bpm: float, seconds: float, sets, extra) -> list[str]:
    cmd = [sys.executable, "-m", "improv", "jam", "--backend", "jack", "--virtual",
           "--in", f"improv in {tag}", "--out", f"improv out {tag}", "--model", str(model),
           "--bpm", str(bpm), "--seconds", str(seconds), "--seed", "7", "--threads", "1",
           "--no-record", *extra]
    for s in sets:
        cmd += ["--set", s]
    return cmd


class _Run:
    """A jam process (under a pty or headless), our listener and player port, its API tap."""

    def __init__(self, cmd: list[str], tag: str, ui: bool) -> None:
        self.tag = tag
        self.runtime = tempfile.mkdtemp(prefix="improv-bi-")  # short: a socket path is ~100 B
        self.sock_path = os.path.join(self.runtime, "j.sock")
        cmd = cmd + ["--socket", self.sock_path]
        env = dict(os.environ, JACK_NO_START_SERVER="1", IMPROV_RUNTIME_DIR=self.runtime,
                   PYTHONUNBUFFERED="1")
        self.lines: list[tuple[float, str]] = []
        self.term = None
        if ui:
            env.update(TERM="xterm-256color", COLUMNS="160", LINES="48")
            self.term = Pty(160, 48)
            self.proc = subprocess.Popen(cmd, stdin=self.term.slave, stdout=self.term.slave,
                                         stderr=self.term.slave, env=env,
                                         start_new_session=True)
            self.term.close_slave()
        else:
            cmd.append("--no-tui")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, env=env, start_new_session=True)
            threading.Thread(target=self._read, daemon=True).start()
        self.rec = self.out = self.tap = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((now(), line.rstrip()))

    def said(self) -> str:
        if self.term is not None:
            return self.term.text()[-400:]
        return " / ".join(x for _, x in self.lines[-4:])

    def connect(self, backend, clock_from_jam: bool) -> None:
        def port():
            if self.proc.poll() is not None:
                raise LiveError(f"improv jam exited: {self.said()}")
            return next((n for n in input_names(backend) if f"improv out {self.tag}" in n), None)

        live._wait(port, 60.0, "the jam's output port")
        self.tap = ApiTap(self.sock_path)
        live._wait(lambda: self.tap.snapshot is not None, 30.0, "the jam's first snapshot")
        self.rec = trading.Listener(f"improv out {self.tag}", client=f"bench-iso-{self.tag}")
        self.out = backend.open_output(match_port(f"improv in {self.tag}",
                                                  backend.get_output_names()))
        if clock_from_jam:
            live._wait(lambda: any(m.type == "start" for _, m in self.rec.copy()), 10.0,
                       "the jam's MIDI Start")
        time.sleep(0.5)

    def play_call(self, transpose: int = 0) -> None:
        for pitch in CALL:
            self.out.send(mido.Message("note_on", note=pitch + transpose, velocity=90))
            time.sleep(0.2)
            self.out.send(mido.Message("note_off", note=pitch + transpose, velocity=0))
            time.sleep(0.05)

    def exchange(self, transpose: int) -> bool:
        """A call, then its whole answer; False when the jam did not answer."""
        n = len(self.tap.states)
        self.play_call(transpose)
        try:
            live._wait(lambda: any(s == "responding" for _, s in self.tap.states[n:]), 6.0,
                       "the answer")
        except LiveError:
            return False
        live._wait(lambda: self.tap.state() != "responding", 30.0, "the answer's end")
        time.sleep(0.3)
        return True

    def stop(self) -> float:
        t = now()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.3)
        return t

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for p in (self.tap, self.rec, self.out):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


class Deaf(LiveError):
    """A jam that never heard our calls (a JACK client that came up deaf): start another."""


JAMS = 3  # jams started in all before a benchmark gives up on deaf ones


def _retrying(once, what: str, log) -> dict:
    """``once(k)`` for jam k, again with a fresh jam while the jam is deaf to us."""
    restarts = []
    for k in range(JAMS):
        stolen = cpu_steal_s()
        try:
            r = once(k)
        except Deaf as e:
            restarts.append(str(e))
            log(f"  {what}: jam {k + 1} of {JAMS} did not hear us; starting another")
            continue
        r["jam_restarts"] = restarts
        after = cpu_steal_s()
        r["steal_ms"] = None if stolen is None or after is None else (after - stolen) * 1e3
        return r
    raise LiveError(f"{JAMS} jams in a row did not hear us; the last: {restarts[-1]}")


def _calls(run: _Run, seconds: float, backend, log) -> int:
    """Calls and answers for ``seconds``; our output reopened once if the jam is deaf to it."""
    t_end = now() + seconds
    answered, k = 0, 0
    while now() < t_end:
        if run.exchange((k % 5) - 2):
            answered += 1
        elif answered == 0 and k == 0:
            log("  the jam did not hear our first call: reopening our output")
            run.out.close()
            run.out = backend.open_output(match_port(f"improv in {run.tag}",
                                                     backend.get_output_names()))
            time.sleep(0.5)
        k += 1
        if k >= 3 and answered == 0:
            raise Deaf(f"the jam answered none of {k} calls: {run.said()[-200:]!r}")
    return answered


def _faults(msgs) -> dict:
    down, doubles = key_faults(msgs)
    return {"stuck_notes": down, "double_strikes": doubles,
            "unpaired_note_ons": len(trading.stuck_notes(list(msgs)))}


def _note_times(msgs, t_exit: float) -> tuple[list[float], int]:
    notes = [t for t, m in msgs if m.type in ("note_on", "note_off") and t < t_exit]
    ons = sum(1 for t, m in msgs if m.type == "note_on" and m.velocity > 0 and t < t_exit)
    return notes, ons


# --- the benchmarks ----------------------------------------------------------------------------


def isolation_run(model: Path, seconds: float, in_process: bool, hog: bool = True,
                  ui: bool = True, bpm: float = 120.0, log=print) -> dict:
    """One jam under the stopwatch; see the module docstring."""
    return _retrying(lambda k: _isolation_once(model, seconds, in_process, hog, ui, bpm, log,
                                               k), "isolation", log)


def _isolation_once(model: Path, seconds: float, in_process: bool, hog: bool, ui: bool,
                    bpm: float, log, k: int) -> dict:
    backend = get_backend("jack")
    tick_s = 60.0 / bpm / PPQ
    tag = f"iso{os.getpid()}{'p' if in_process else 'r'}{int(hog)}{int(ui)}{k}"
    extra = ["--clock-out"] + (["--in-process"] if in_process else [])
    run = _Run(_jam_cmd(model, tag, bpm, seconds + 60, DENSE, extra), tag, ui)
    try:
        run.connect(backend, clock_from_jam=True)
        with cpu_hog(hog) as hog_cpu:
            time.sleep(0.5)
            answered = _calls(run, seconds, backend, log)
            snap = run.tap.snapshot
            t_exit = run.stop()
        ui_frames = None if run.term is None else run.term.text().count("latency")
    finally:
        run.close()
    msgs = run.rec.copy()
    t_start, pulses = trading._clock(run.rec)
    pulses = [t for t in pulses if t < t_exit]
    origin = fit_origin(pulses, pulses[0], tick_s, 0.5)
    pulse_off = grid_offsets(pulses, origin, tick_s) * 1e3
    notes, ons = _note_times(msgs, t_exit)
    if not notes:
        raise LiveError("no answer notes arrived")
    off = grid_offsets(notes, origin, tick_s) * 1e3
    lat = latency_of(snap)
    return {"arrival_ms": off, "pulse_ms": pulse_off, "notes": ons, "messages": len(notes),
            "late_here": int((off > LATE_MS).sum()), "answers": answered,
            "jam_latency": lat, "in_process": in_process, "hog_cpu": hog_cpu, "ui": ui,
            "ui_latency_mentions": ui_frames, "exit_code": run.proc.returncode,
            "pulses": len(pulses), **_faults(msgs)}


def isolated_decode(model: Path, steps: int) -> dict:
    """bench/decode.py's figures for the same model in this run: one thread, CPU."""
    dec = load_bench("decode")
    return {"roll": dec.ort_roll(model, "cpu", 1, steps),
            "fill50": dec.ort_fixed_fill(model, "cpu", 1, 0.5, steps)}


__all__ = ["ApiTap", "fit_line", "fit_origin", "grid_offsets", "grid_residuals",
           "isolated_decode", "isolation_run", "key_faults", "latency_of"]
