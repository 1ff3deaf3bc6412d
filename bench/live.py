"""The live path under a stopwatch: MIDI in, the session, the scheduler, a real `improv jam`.

* ``ingest``: time from a MIDI message entering the session's input queue until its
  tokens are in the engine (``Session.ingest_ms``), while calls are played and answered.
* ``schedule_grid``: a ``Scheduler`` sends a note message on every tick of a 120 BPM
  grid through JACK to a client in this process; error = receive time - deadline,
  idle or next to a process that keeps the other core busy.
* ``jam_e2e``: ``improv jam --no-tui --backend jack --virtual --clock-out`` in its own
  process; start-up time, resident memory, and for each scripted call the first
  answer note's lateness against the jam's own MIDI clock pulse of its planned beat.

All times are seconds of ``improv.live.clock.now``, which is system-wide on Linux, so
stamps taken in two processes compare. Part of the bench package (bench/common.py runs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mido
import numpy as np

from improv.live.clock import Clock, now
from improv.live.ports import get_backend, input_names, match_port

CALL = (60, 62, 64, 65, 67, 65, 64, 62)  # the e2e test's phrase: 0.2 s notes, 0.05 s gaps


class LiveError(RuntimeError):
    """A live benchmark that could not run here; the message says why."""


# --- JACK ----------------------------------------------------------------------------------------


def jack_running() -> bool:
    if not shutil.which("jack_lsp"):
        return False
    try:
        done = subprocess.run(["jack_lsp"], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@contextlib.contextmanager
def jack_server(shared: bool = False):
    """A JACK server for the run: a private `jackd -d dummy` of our own, or the running one.

    The private server has a name of its own (``JACK_DEFAULT_SERVER``, which this
    process, its clients and the jam inherit), so nobody else's server coming and going
    can cut a run short, and runs on two machines compare. ``shared``: use the running
    default server (a real sound card's), starting a dummy one only when there is none.
    """
    os.environ["JACK_NO_START_SERVER"] = "1"  # no client may autostart one behind our back
    old = os.environ.pop("JACK_DEFAULT_SERVER", None)
    name = None if shared else f"improv-bench-{os.getpid()}"
    if name:
        os.environ["JACK_DEFAULT_SERVER"] = name
    elif old:
        os.environ["JACK_DEFAULT_SERVER"] = old
    try:
        if shared and jack_running():
            yield "the running JACK server"
            return
        jackd = shutil.which("jackd")
        if jackd is None:
            raise LiveError("no JACK server and no jackd to start one (apt install jackd2)")
        cmd = [jackd, *(["-n", name] if name else []), "-d", "dummy", "-r", "48000", "-p", "64"]
        with tempfile.TemporaryFile("w+") as log:  # a file: jackd must never block on a pipe
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 10.0
                while not jack_running():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise LiveError(f"jackd did not start: {log.read().strip()[-200:]}")
                    time.sleep(0.1)
                yield " ".join(["jackd", *cmd[1:]])
            finally:
                end_process(proc)
    finally:
        os.environ.pop("JACK_DEFAULT_SERVER", None)
        if old is not None:
            os.environ["JACK_DEFAULT_SERVER"] = old


def end_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait(pred, timeout: float, what: str, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise LiveError(f"timed out waiting for {what}")


class Recorder:
    """A MIDI input that keeps every message with the time it arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[float, mido.Message]] = []
        self.lock = threading.Lock()

    def __call__(self, msg: mido.Message) -> None:
        t = now()
        with self.lock:
            self.got.append((t, msg))

    def copy(self) -> list[tuple[float, mido.Message]]:
        with self.lock:
            return list(self.got)


# --- note in -> tokens in the engine ---------------------------------------------------------


class _NullOutput:
    def send(self, msg: mido.Message) -> None:
        pass


def ingest(model_dir: Path, seconds: float, bpm: float = 120.0) -> dict:
    """Play the demo's call into a running session, again and again; ``Session.ingest_ms``."""
    from improv.commands.demo import BUILT_IN_CALL, play_call
    from improv.core.presets import PresetLibrary, apply_overrides
    from improv.live.engine import Engine
    from improv.live.scheduler import Scheduler
    from improv.live.session import Session, SessionOptions

    clock = Clock(bpm)
    sched = Scheduler(_NullOutput(), clock)
    library = PresetLibrary()
    preset = apply_overrides(next(iter(library)), silence_beats=1, response_bars=1,
                             response_start="beat", humanize_ms=0)
    session = Session(Engine(model_dir, provider="cpu", threads=1), clock, sched, library,
                      preset, options=SessionOptions(seed=0))
    if not hasattr(session, "ingest_ms"):
        raise LiveError("this improv's Session has no ingest_ms hook")
    session.start()
    bar = clock.bar_ticks
    t_end = now() + seconds
    calls, gap = 0, 4
    try:
        while now() < t_end:
            start = clock.next_bar(clock.now_tick() + 1)
            play_call(session, clock, BUILT_IN_CALL, start)
            calls += 1
            # Every other call comes in while the answer still plays (a barge-in).
            gap = 3 if gap == 4 else 4
            wake = clock.tick_to_time(start + gap * bar)
            while now() < min(wake, t_end) and session.running:
                time.sleep(0.02)
    finally:
        session.stop()
        sched.stop()
    if session.error is not None:
        raise LiveError(f"the session failed: {session.error}")
    return {"ms": np.array(session.ingest_ms), "calls": calls,
            "answers": len(session.responses)}


# --- the scheduler against the clock grid ------------------------------------------------------


def schedule_grid(seconds: float, loaded: bool, bpm: float = 120.0) -> dict:
    """One message per tick through JACK; errors at the receiver and at the scheduler."""
    from improv.live.scheduler import Scheduler

    backend = get_backend("jack")
    name = f"improv bench grid {os.getpid()}"
    out = backend.open_output(name, virtual=True, client_name="improv-bench")
    rec = Recorder()
    inp = backend.open_input(match_port(name, input_names(backend)), callback=rec)
    hog = None
    if loaded:  # a busy process of its own: the GIL must not be what we measure
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    clock = Clock(bpm)
    sched = Scheduler(out, clock)
    try:
        first = clock.next_beat(clock.now_tick() + 24)
        n = max(2, int(seconds / clock.seconds_per_tick))
        plan = []
        for i in range(n):
            kind = "note_on" if i % 2 == 0 else "note_off"
            msg = mido.Message(kind, note=40 + (i // 2) % 48, velocity=64 if i % 2 == 0 else 0)
            plan.append((clock.tick_to_time(first + i), msg, first + i))
        pushed = 0
        while pushed < n:  # half a second ahead, as the session generates ahead
            while pushed < n and plan[pushed][0] < now() + 0.5:
                sched.schedule(plan[pushed][1], plan[pushed][2])
                pushed += 1
            time.sleep(0.05)
        _wait(lambda: sched.pending() == 0, seconds + 5.0, "the scheduler to drain")
        time.sleep(0.1)
        stats = sched.stats()
        send_errors = np.array(sched.errors) * 1e3
    finally:
        sched.stop()
        if hog is not None:
            hog.kill()
            hog.wait()
        got = rec.copy()
        inp.close()
        out.close()
    errors, matched = [], 0
    for (deadline, sent, _), (t, msg) in zip(plan, got, strict=False):
        if msg.type == sent.type and getattr(msg, "note", None) == sent.note:
            errors.append((t - deadline) * 1e3)
            matched += 1
    return {"receive_ms": np.array(errors), "send_ms": send_errors, "planned": n,
            "received": matched, "late": stats.late, "realtime": stats.realtime,
            "stats_p50_ms": stats.p50_ms, "stats_p99_ms": stats.p99_ms,
            "stats_max_ms": stats.max_ms}


# --- `improv jam` end to end -------------------------------------------------------------------


def _rss_mb(pid: int) -> dict:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return fields


def jam_e2e(model_dir: Path, calls: int, bpm: float = 120.0, log=print) -> dict:
    """Start a jam, play ``calls`` calls into it, time everything that comes back."""
    backend = get_backend("jack")
    tag = f"bench{os.getpid()}"
    beat_s = 60.0 / bpm
    silence_beats, lead_s = 1.0, 0.030  # the preset override below; SessionOptions.min_lead_ms
    tmp = tempfile.TemporaryDirectory()
    cmd = [
        sys.executable, "-m", "improv", "jam", "--no-tui", "--backend", "jack", "--virtual",
        "--in", f"improv in {tag}", "--out", f"improv out {tag}", "--model", str(model_dir),
        "--bpm", str(bpm), "--seconds", str(60 + 8 * calls), "--seed", "3", "--clock-out",
        "--threads", "1", "--record", str(Path(tmp.name) / "set.mid"),
        # The silence path on purpose (what this row times); the predicted hand-over has
        # the "handover" benchmark.
        "--set", f"silence_beats={silence_beats:g}", "--set", "response_bars=1",
        "--set", "predict_handover=false",
        "--set", "humanize_ms=0", "--set", "swing=0", "--set", "response_start=beat",
        "--set", "density=0.5",
    ]
    lines: list[tuple[float, str]] = []
    t_spawn = now()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, JACK_NO_START_SERVER="1"))

    def read() -> None:
        for line in proc.stdout:
            lines.append((now(), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rec, inp, out = Recorder(), None, None
    res: dict = {"calls": []}
    try:
        def port():
            if proc.poll() is not None:
                raise LiveError("improv jam exited: " + " / ".join(x for _, x in lines[-3:]))
            return next((n for n in input_names(backend) if f"improv out {tag}" in n), None)

        out_name = _wait(port, 60.0, "the jam's output port")
        t_ports = now()
        t_state = _wait(lambda: next((t for t, x in lines if "state:" in x), None), 30.0,
                        "the jam's first state line")
        res["startup"] = {"ports_s": t_ports - t_spawn, "first_state_s": t_state - t_spawn,
                          "ready_s": max(t_ports, t_state) - t_spawn}
        inp = backend.open_input(out_name, callback=rec)
        out = backend.open_output(match_port(f"improv in {tag}", backend.get_output_names()))
        time.sleep(1.0)
        res["memory_after_start"] = _rss_mb(proc.pid)
        _wait(lambda: any(m.type == "start" for _, m in rec.copy()), 10.0, "MIDI clock start")
        for i in range(calls):
            try:
                res["calls"].append(_one_call(rec, out, beat_s, silence_beats * beat_s, lead_s))
            except LiveError as e:
                tail = " / ".join(x for _, x in lines[-4:])
                raise LiveError(f"call {i + 1}: {e}; the jam said: {tail}") from None
            c = res["calls"][-1]
            log(f"  call {i + 1}: first note {c['lateness_ms']:+.2f} ms against its beat "
                f"({c['pulses_missing']} clock pulses lost)")
        res["memory_after_calls"] = _rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in (inp, out):
            if p is not None:
                p.close()
        tmp.cleanup()
    res["exit_code"] = proc.returncode
    res["log_tail"] = [x for _, x in lines if x.startswith("latency:")][-1:]
    return res


def planned_beat(beats: list[float], earliest: float, t_note: float) -> float:
    """The beat the answer was planned on: the first at or after ``earliest``.

    ``earliest`` is the session's decision (last note-off + silence) plus its minimum
    lead. Our stamp of the decision is a JACK period or two early, so when a beat falls
    within a few ms of ``earliest`` it may be the planned one or the next: the one nearer
    the note is taken.
    """
    cands = [b for b in beats if b >= earliest - 0.005]
    if not cands:
        raise LiveError("no clock pulse after the call's end")
    if len(cands) > 1 and cands[0] < earliest + 0.010:
        return min(cands[:2], key=lambda b: abs(b - t_note))
    return cands[0]


def _one_call(rec: Recorder, out, beat_s: float, silence_s: float, lead_s: float) -> dict:
    """Play the phrase; the answer's first note against the clock pulse of its beat."""
    n0 = len(rec.copy())
    t_first_on = now()
    for pitch in CALL:
        out.send(mido.Message("note_on", note=pitch, velocity=90))
        time.sleep(0.2)
        out.send(mido.Message("note_off", note=pitch, velocity=0))
        time.sleep(0.05)
    t_off = now() - 0.05  # the last note-off went out just before the final gap
    got = _wait(lambda: next(((t, m) for t, m in rec.copy()[n0:]
                              if m.type == "note_on" and m.velocity > 0), None),
                10.0 + 2 * beat_s, "the answer's first note")
    t_note = got[0]
    end = t_note + 4 * beat_s + 0.3  # let the one-bar answer play out before the next call
    while now() < end:
        time.sleep(0.05)
    msgs = rec.copy()
    start_i = next(i for i, (_, m) in enumerate(msgs) if m.type == "start")
    pulses = [t for t, m in msgs[start_i:] if m.type == "clock"]
    # 24 pulses a beat from Start. Index pulses by time, not by count, so that a pulse
    # lost on the way cannot shift the grid by a tick (the jam's tempo is fixed).
    tick_s = beat_s / 24
    index = [round((t - pulses[0]) / tick_s) for t in pulses]
    beats = [t for t, i in zip(pulses, index, strict=True) if i % 24 == 0]
    decided = t_off + silence_s
    planned = planned_beat(beats, decided + lead_s, t_note)
    return {"lateness_ms": (t_note - planned) * 1e3,
            "call_end_to_first_note_ms": (t_note - decided) * 1e3,
            "planned_after_call_end_ms": (planned - decided) * 1e3, "call_s": t_off - t_first_on,
            "pulses_missing": index[-1] + 1 - len(pulses)}
