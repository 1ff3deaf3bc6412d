"""Trading through JACK: does every answer start on its planned bar line?

``trading`` starts ``improv jam --no-tui --backend jack --virtual --clock-out`` with
``call_bars=2`` in its own process. The player (this process, a JACK client) listens
to the jam's MIDI clock to know where the jam's bar lines are, plays 2-bar calls that
begin on one of them, and times what comes back: the answer's first note against
the clock pulse of the bar line 2 bars after the call's first (the planned line),
where the answer ends against the line 2 bars later, and, once the jam has gone,
that every note it started was ended. Calls vary how they end: well before the
hand-over line, just before it, or held across it (the answer starts on the line
whatever the player holds).

The player listens through :class:`Listener` (rtmidi's queue, no Python in JACK's
thread) and checks its output with a probe note first; a jam that does not hear it is
replaced (counted in ``jam_restarts``). All times are seconds of ``improv.live.clock.now``
(system-wide on Linux). Part of the bench package (bench/common.py runs it).

With ``predicted=True`` the same calls go to a jam with ``call_bars=0``, the default
hand-over: the session must judge from the phrase itself that it ends on that line
(only the endings that let go before the line: a held note is no hand-over there).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mido
import numpy as np

from bench.common import load_bench
from improv.live.clock import now
from improv.live.handover import LINE_SLACK
from improv.live.ports import get_backend, input_names, match_port

live = load_bench("live")
LiveError = live.LiveError

CALL_BARS = 2
PPQ = 24  # MIDI clock pulses a beat
END_TOLERANCE_MS = 5.0  # the answer's last note-off may arrive this late after its end line
# Onsets in beats from the call's bar line; 8 notes over 2 bars of 4/4, the first on the line.
ONSETS = (0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5)
PITCHES = (60, 62, 64, 65, 67, 65, 64, 62)
# How the last note ends, in beats from the call's bar line (the hand-over line is at 8).
ENDINGS = {"early": (6.5, 6.9), "to the line": (7.0, 7.98), "held across": (7.0, 8.5)}
ENDED_RE = re.compile(r"call ended \((\w+)\); answer of (\d+) bar\(s\) from bar (\d+)")


# --- pure helpers (tested) ---------------------------------------------------------------------


def index_pulses(times: list[float], t_start: float, tick_s: float) -> list[int]:
    """Each pulse's index from MIDI Start, by time: a lost pulse cannot shift the grid.

    The jam sends Start just before the pulse of a bar line (index 0), at a fixed tempo.
    """
    return [round((t - t_start) / tick_s) for t in times]


def grid_origin(times: list[float], index: list[int], tick_s: float) -> float:
    """When pulse 0 arrives here, from every pulse (the median, robust to a late one)."""
    if not times:
        raise LiveError("no MIDI clock pulses from the jam")
    return float(np.median(np.asarray(times) - np.asarray(index) * tick_s))


def bar_line_of(t: float, origin: float, tick_s: float, bar_pulses: int) -> int:
    """The pulse index of the bar line the jam hears a first note at ``t`` on.

    As the session's ``_bar_line_of``: the nearest tick, and a note a hair
    (``LINE_SLACK`` ticks) early belongs to the coming line.
    """
    tick = round((t - origin) / tick_s)
    return (tick + LINE_SLACK) // bar_pulses * bar_pulses


def planned_line(call_line: int, call_bars: int, bar_pulses: int) -> int:
    """The pulse index the answer starts on: the line ``call_bars`` bars after the call's."""
    return call_line + call_bars * bar_pulses


def pulse_time(times: list[float], index: list[int], i: int, origin: float,
               tick_s: float) -> tuple[float, bool]:
    """The arrival of pulse ``i``, and whether it arrived (else the grid's estimate)."""
    for t, j in zip(times, index, strict=True):
        if j == i:
            return t, True
    return origin + i * tick_s, False


def stuck_notes(msgs: list[tuple[float, mido.Message]]) -> list[tuple[int, int]]:
    """(channel, note) of every note-on that no note-off followed."""
    down: dict[tuple[int, int], int] = {}
    for _, m in msgs:
        if m.type not in ("note_on", "note_off"):
            continue
        key = (m.channel, m.note)
        if m.type == "note_on" and m.velocity > 0:
            down[key] = down.get(key, 0) + 1
        elif down.get(key):
            down[key] -= 1
    return sorted(k for k, n in down.items() if n > 0)


def call_messages(onset_s: float, beat_s: float, ending: str,
                  transpose: int = 0) -> list[tuple[float, mido.Message]]:
    """The call's messages at their times (seconds), from its bar line at ``onset_s``."""
    last_on, last_off = ENDINGS[ending]
    onsets = list(ONSETS[:-1]) + [last_on]
    out = []
    for k, (beat, pitch) in enumerate(zip(onsets, PITCHES, strict=True)):
        end = last_off if k == len(onsets) - 1 else beat + 0.4
        p = pitch + transpose
        out.append((onset_s + beat * beat_s, mido.Message("note_on", note=p, velocity=90)))
        out.append((onset_s + end * beat_s, mido.Message("note_off", note=p, velocity=0)))
    return sorted(out, key=lambda x: x[0])


def summarize_trades(calls: list[dict], bar_ms: float) -> dict:
    """The share of answers on their line and of the right length."""
    late = [c["lateness_ms"] for c in calls if c["lateness_ms"] is not None]
    n = len(calls)
    on_line = sum(1 for x in late if abs(x) <= bar_ms)
    right = sum(1 for c in calls if c["right_length"])
    return {"trades": n, "answered": len(late), "on_line": on_line,
            "on_line_share": on_line / n if n else 0.0, "right_length": right,
            "right_length_share": right / n if n else 0.0}


# --- the run -------------------------------------------------------------------------------------


def _sleep_until(t: float) -> None:
    while True:
        d = t - now()
        if d <= 0:
            return
        time.sleep(d - 0.001 if d > 0.002 else 0)


def _clock(rec) -> tuple[float, list[float]]:
    msgs = rec.copy()
    i = next((k for k, (_, m) in enumerate(msgs) if m.type == "start"), None)
    if i is None:
        raise LiveError("no MIDI Start from the jam")
    return msgs[i][0], [t for t, m in msgs[i:] if m.type == "clock"]


class Listener:
    """A JACK MIDI input that keeps every message with its arrival time.

    No Python runs in JACK's thread: rtmidi queues each message with a JACK time stamp
    (its queue mode, no callback), and a thread here polls the queue. A callback would
    take the GIL in JACK's real-time thread; on a busy machine that thread then misses
    its cycle, and JACK drops or repeats that cycle's messages (pulses lost, note-offs
    lost). Times are JACK's, put on ``improv.live.clock.now`` by the smallest poll delay
    among the neighbouring messages; ``copy()`` is ``Recorder.copy()``.
    """

    WINDOW = 200  # messages either side whose quickest poll sets a message's offset

    def __init__(self, port_part: str, client: str = "improv-bench-trading"):
        import rtmidi

        self._rt = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=client, queue_size_limit=1 << 16)
        self._rt.ignore_types(sysex=True, timing=False, active_sense=True)
        ports = self._rt.get_ports()
        i = next((k for k, n in enumerate(ports) if port_part in n), None)
        if i is None:
            raise LiveError(f"no JACK MIDI output like {port_part!r} (there are {ports})")
        self._rt.open_port(i, "trading in")
        self._got: list[tuple[float, float, mido.Message]] = []  # JACK s, polled at, message
        self._lock = threading.Lock()
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        jack_s = 0.0
        while not self._quit.is_set():
            item = self._rt.get_message()
            if item is None:
                time.sleep(0.0005)
                continue
            polled = now()
            jack_s += item[1]  # rtmidi's time since the previous message, from jack_get_time
            try:
                msg = mido.Message.from_bytes(item[0])
            except ValueError:
                continue
            with self._lock:
                self._got.append((jack_s, polled, msg))

    def copy(self) -> list[tuple[float, mido.Message]]:
        with self._lock:
            got = list(self._got)
        if not got:
            return []
        return list(zip(jack_to_now([g[0] for g in got], [g[1] for g in got], self.WINDOW),
                        (g[2] for g in got), strict=True))

    def close(self) -> None:
        self._quit.set()
        self._thread.join(timeout=1.0)
        self._rt.close_port()
        del self._rt


def jack_to_now(jack_s: list[float], polled: list[float], window: int) -> list[float]:
    """JACK time stamps on our clock: each shifted by the least (poll - stamp) around it.

    Every message is polled after it arrived, some at once: the smallest difference
    among a message's neighbours is the offset between the two clocks (a window, not
    all messages, in case the two clocks run at slightly different rates).
    """
    j = np.asarray(jack_s, dtype=np.float64)
    d = np.asarray(polled, dtype=np.float64) - j
    pad = np.pad(d, window, mode="edge")
    offset = np.lib.stride_tricks.sliding_window_view(pad, 2 * window + 1).min(axis=1)
    return (j + offset).tolist()


class _Jam:
    """An ``improv jam`` in its own process, its printed lines, and our two ports to it."""

    def __init__(self, cmd: list[str], tag: str):
        self.tag, self.lines = tag, []
        self.rec, self.out = None, None
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, JACK_NO_START_SERVER="1", PYTHONUNBUFFERED="1"))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((now(), line.rstrip()))

    def said(self, n: int = 4) -> str:
        return " / ".join(x for _, x in self.lines[-n:])

    def connect(self, backend, tick_s: float) -> None:
        """Our ports to the jam's, once it is up; its clock must reach us whole."""
        def port():
            if self.proc.poll() is not None:
                raise LiveError(f"improv jam exited: {self.said(3)}")
            return next((n for n in input_names(backend) if f"improv out {self.tag}" in n), None)

        live._wait(port, 60.0, "the jam's output port")
        live._wait(lambda: any("state:" in x for _, x in self.lines), 30.0, "its first state")
        self.rec = Listener(f"improv out {self.tag}")
        self.out = backend.open_output(self._in_port(backend))
        live._wait(lambda: any(m.type == "start" for _, m in self.rec.copy()), 10.0, "MIDI Start")
        time.sleep(1.0)
        t_start, times = _clock(self.rec)
        recent = [t for t in times if t > now() - 1.0]
        if len(recent) < 0.9 / tick_s:
            raise LiveError(f"{len(recent)} clock pulses in the last second, not "
                            f"{round(1 / tick_s)}: our JACK input misses cycles")

    def _in_port(self, backend) -> str:
        return match_port(f"improv in {self.tag}", backend.get_output_names())

    def probe(self, backend, tick_s: float, bar_s: float, log, tries: int = 2) -> float:
        """Test our output to the jam: a note it must hear ("state: listening").

        A JACK client opened while others open and close can come up deaf (jackd then
        logs "client was not finished" every cycle), so our port is reopened once. The
        probe is a call like any other: the measured calls start after its answer and a
        bar's rest; returns when the first may start.
        """
        for attempt in range(tries):
            t_start, times = _clock(self.rec)
            index = index_pulses(times, t_start, tick_s)
            origin = grid_origin(times[-200:], index[-200:], tick_s)
            bar = math.ceil((now() + 0.1 - origin) / bar_s)
            t_probe = origin + bar * bar_s + 24 * tick_s  # a beat into the bar
            n = len(self.lines)
            _sleep_until(t_probe)
            self.out.send(mido.Message("note_on", note=72, velocity=80))
            _sleep_until(t_probe + 0.2)
            self.out.send(mido.Message("note_off", note=72, velocity=0))
            try:
                live._wait(lambda n=n: any("state: listening" in x for _, x in self.lines[n:]),
                           1.0, "the jam to hear our probe note")
                return origin + (bar + 2 * CALL_BARS + 1) * bar_s - 0.1
            except LiveError:
                if attempt + 1 < tries:
                    log("  the jam did not hear our probe: reopening our output")
                    self.out.close()
                    self.out = backend.open_output(self._in_port(backend))
                    time.sleep(0.5)
        raise LiveError(f"the jam did not hear our output ({tries} tries); it said: "
                        f"{self.said()}")

    def stop(self) -> float:
        """SIGTERM, as a player ends a set; when it was sent."""
        t = now()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.reader.join(timeout=5)
        time.sleep(0.3)  # the jam's last note-offs on their way
        return t

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in (self.rec, self.out):
            if p is not None:
                p.close()


def trading(model_dir: Path, calls: int, bpm: float = 120.0, bar_ms: float = 2.0,
            log=print, jams: int = 3, predicted: bool = False) -> dict:
    """Start a jam that trades 2-bar phrases, trade ``calls`` times, time every answer.

    A jam that does not hear our probe note is replaced by a fresh one, up to ``jams``
    in all (the result counts them: ``jam_restarts``).
    """
    backend = get_backend("jack")
    beat_s, tick_s, bar_pulses = 60.0 / bpm, 60.0 / bpm / PPQ, 4 * PPQ
    bar_s = bar_pulses * tick_s
    tmp = tempfile.TemporaryDirectory()
    restarts: list[str] = []
    for k in range(jams):
        tag = f"trade{os.getpid()}-{k}"
        jam = _Jam([
            sys.executable, "-m", "improv", "jam", "--no-tui", "--backend", "jack", "--virtual",
            "--in", f"improv in {tag}", "--out", f"improv out {tag}", "--model", str(model_dir),
            "--bpm", str(bpm), "--seconds", str(60 + 6 * bar_s * calls), "--seed", "5",
            "--clock-out", "--threads", "1", "--record", str(Path(tmp.name) / f"set{k}.mid"),
            "--set", f"call_bars={0 if predicted else CALL_BARS}", "--set", "response_bars=0",
            "--set", "humanize_ms=0", "--set", "swing=0", "--set", "response_start=bar",
        ], tag)
        try:
            jam.connect(backend, tick_s)
            next_t = jam.probe(backend, tick_s, bar_s, log)
            break
        except LiveError as e:
            jam.close()
            restarts.append(str(e))
            log(f"  jam {k + 1} of {jams} failed: {e}")
    else:
        tmp.cleanup()
        raise LiveError(f"{jams} jams in a row failed; the last: {restarts[-1]}")
    rec, lines, played = jam.rec, jam.lines, []
    try:
        endings = [e for e in ENDINGS if not (predicted and e == "held across")]
        for i in range(calls):
            t_start, times = _clock(rec)
            index = index_pulses(times, t_start, tick_s)
            origin = grid_origin(times[-200:], index[-200:], tick_s)
            bar = math.ceil((next_t - origin) / bar_s)  # the jam's next bar line after next_t
            onset = origin + bar * bar_s
            ending = endings[i % len(endings)]
            msgs = call_messages(onset, beat_s, ending, transpose=(i % 5) - 2)
            _sleep_until(onset - 0.05)
            n0 = len(rec.copy())  # what arrives from here is this call's answer
            sent = []
            for t, msg in msgs:
                _sleep_until(t)
                sent.append(now())
                jam.out.send(msg)
            played.append({"ending": ending, "bar": bar, "t_first": sent[0], "n0": n0})
            # The answer (2 bars from the planned line), then a bar's rest: 5 bars a call.
            next_t = onset + (2 * CALL_BARS + 1) * bar_s - 0.1
            _sleep_until(onset + 2 * CALL_BARS * bar_s + 0.3)
            got = [m for _, m in rec.copy()[n0:] if m.type == "note_on" and m.velocity > 0]
            log(f"  call {i + 1} ({ending}): {len(got)} answer notes")
        _sleep_until(next_t)
        t_exit = jam.stop()
    finally:
        jam.close()
        tmp.cleanup()
    msgs = rec.copy()
    t_start, times = _clock(rec)
    times = [t for t in times if t <= t_exit]  # the jam's own pulses, before it was told to go
    index = index_pulses(times, t_start, tick_s)
    grid = (times, index, grid_origin(times, index, tick_s), tick_s, bar_pulses)
    # The session's lines as the headless printer shows them ("[beat] ..."; its logger
    # says each once more without the beat).
    said = [(t, x) for t, x in lines if x.startswith("[") and ("call " in x or "barge" in x)]
    res = {"calls": [], "exit_code": jam.proc.returncode, "jam_restarts": restarts,
           "bar_ms": bar_ms,
           "end_tolerance_ms": END_TOLERANCE_MS, "bpm": bpm,
           "call_bars": 0 if predicted else CALL_BARS,
           "stuck_notes": stuck_notes(msgs), "jam_log": [x for _, x in said],
           "pulses_missing": index[-1] + 1 - len(set(index)) if times else None,
           "pulses_doubled": len(index) - len(set(index))}
    for i, c in enumerate(played):
        stop = played[i + 1]["t_first"] if i + 1 < len(played) else t_exit
        window = [(t, m) for t, m in msgs[c["n0"]:] if c["t_first"] <= t < stop]
        res["calls"].append(trade_result(c, window, grid, [(t, x) for t, x in said
                                                           if c["t_first"] <= t < stop]))
    res.update(summarize_trades(res["calls"], bar_ms))
    return res


def trade_result(call: dict, window: list, grid: tuple, said: list) -> dict:
    """One call's answer: its first note against its line, its end against the next."""
    times, index, origin, tick_s, bar_pulses = grid
    line = bar_line_of(call["t_first"], origin, tick_s, bar_pulses)
    plan = planned_line(line, CALL_BARS, bar_pulses)
    t_line, had = pulse_time(times, index, plan, origin, tick_s)
    t_end, _ = pulse_time(times, index, plan + CALL_BARS * bar_pulses, origin, tick_s)
    notes = [(t, m) for t, m in window if m.type in ("note_on", "note_off")]
    ons = [t for t, m in notes if m.type == "note_on" and m.velocity > 0]
    offs = [t for t, m in notes if m.type == "note_off" or m.velocity == 0]
    end_ms = (max(offs) - t_end) * 1e3 if offs else None
    held = stuck_notes(notes)  # a note of the answer not ended before the next call
    ended = [m for m in (ENDED_RE.search(x) for _, x in said) if m]
    return {
        "ending": call["ending"], "call_on_planned_bar": line == call["bar"] * bar_pulses,
        "first_note_vs_bar_ms": (call["t_first"] - (origin + line * tick_s)) * 1e3,
        "lateness_ms": (ons[0] - t_line) * 1e3 if ons else None,
        "line_pulse_arrived": had, "notes": len(ons), "last_off_vs_end_line_ms": end_ms,
        "unended": held,
        "right_length": end_ms is not None and end_ms <= END_TOLERANCE_MS and not held,
        "reaches_last_bar": bool(offs and max(offs) > t_end - tick_s * bar_pulses),
        "jam_said": [x.split("] ", 1)[-1] for _, x in said],
        "jam_bars_answered": [int(m.group(2)) for m in ended],
        "jam_bar_minus_ours": [int(m.group(3)) - plan // bar_pulses for m in ended],
    }
