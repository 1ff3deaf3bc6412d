"""`improv bench`: how fast improv is on this machine, and against a peer, in one command.

This module owns the benchmark suite: it runs every measurement, writes
``bench/results/HOST-DATE.json`` (the schema below), ``HOST-DATE.md`` (the README's
"Performance" section for this machine) and PNG plots, and sets up the peer. The
measurements live beside ``bench/decode.py`` in the repository's bench/ folder
(``model_cost.py``, ``live.py``, ``trading.py``, ``plots.py``): bench/ is a package that
imports improv, never the other way round. ``improv bench`` and ``python bench/run.py`` are
the same program.

Benchmarks (``--only`` / ``--skip`` take these names): ``decode`` (decode step
against context fill, cached and not, CPU and GPU), ``per_note`` (model cost per
note event, with the Notochord peer), ``generation`` (music seconds per compute
second), ``ingest`` (note in to tokens in the engine), ``schedule`` (clock grid
through JACK, idle and loaded), ``jam`` (a real `improv jam`: start-up, memory,
call end to the first answer note), ``trading`` (a jam trading 2-bar phrases:
each answer's first note against the MIDI clock pulse of its planned bar line), ``handover``
(the same calls with the default, predicted hand-over: the answer on the line the call ends on),
``isolation`` (a real jam, its UI at 160x48, a CPU hog, dense answers: arrival at a JACK
listener - deadline, the jam's send error and its decode step against bench/decode.py's;
the I/O process and ``--in-process``), ``clock_follow`` (``--clock midi`` following a
master with +-1 ms jitter per pulse, and jack_midi_clock: answer notes off the master's grid).

The peer, Notochord (PyPI), pins an older torch and textual than improv, so it
gets a virtual environment of its own under ``~/.cache/improv/bench`` and runs
as a subprocess that prints JSON. Its default architecture with random weights
is timed (its latency does not depend on the weight values), one torch thread.

Result schema (``SCHEMA``): ``benchmarks.NAME.configs.CONFIG`` holds a latency
distribution with ``median_ms``, ``p99_ms``, ``p999_ms``, ``max_ms``; ``validate``
checks it. This command may import torch (the decode comparison); improv's live
path does not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
SCHEMA = 1
BENCHMARKS = ("decode", "per_note", "generation", "ingest", "schedule", "jam", "trading",
              "handover", "isolation", "clock_follow")
NOTOCHORD_VERSION = "0.8.0"
# What `import notochord` needs (its own pins minus torch; sf2utils, iipyper and
# toml-file serve its apps and would pull an old textual).
PEER_DEPS = ("numpy>=1.23,<3", "pandas>=2,<3", "tqdm>=4.64,<5", "appdirs>=1.4.4,<2",
             "joblib>=1.4.2,<2", "mido>=1.3")
DEFAULT_TORCH = "2.13.0"
BAR_RATIO = 0.25  # improv's model cost per note event must be <= a quarter of the peer's
BAR_LATE_MS = 5.0  # the first answer note no later than its planned beat + 5 ms
BAR_TRADING_MS = 2.0  # trading: every answer's first note within 2 ms of its bar line
# predicted hand-over: on the line, or a moment after a release on it (handover.GRACE_S
# and a decode): within a 32nd at 120 BPM
BAR_HANDOVER_MS = 31.0
# issue 11 (real-time isolation): UI at 160x48, a CPU hog, dense answers
BAR_ISO_ARRIVAL_MS = 2.0  # arrival at a JACK listener - deadline, p99 (JACK's period included)
BAR_ISO_SEND_MS = 0.5  # the scheduler's send time - deadline, p99
BAR_DECODE_RATIO = 1.5  # decode step median inside a jam <= 1.5x bench/decode.py's
BAR_FOLLOW_MS = 1.5  # following a +-1 ms jittered master: answer notes p99 off its grid


class BenchError(Exception):
    """A benchmark that cannot run; the message says what to do."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summarize(ms) -> dict:
    """A latency distribution in milliseconds, as every ``configs`` entry holds it."""
    x = np.asarray(ms, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise BenchError("no samples to summarize")
    return {"median_ms": float(np.median(x)), "p99_ms": float(np.percentile(x, 99)),
            "p999_ms": float(np.percentile(x, 99.9)), "max_ms": float(x.max()),
            "mean_ms": float(x.mean()), "n": int(x.size)}


def load_bench(name: str):
    """A module of this package by name, e.g. ``load_bench("decode")``."""
    return importlib.import_module(f"bench.{name}")


# --- the machine ---------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    mem_gib = None
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                    if ln.startswith("model name")), cpu)
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
        mem_gib = kb / 2**20
    except (OSError, StopIteration, ValueError):
        pass

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"host": socket.gethostname(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_gib": mem_gib, "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": version("onnxruntime-gpu") or version("onnxruntime"),
            "torch": version("torch"), "gpu": None, "loadavg_before": os.getloadavg()[0]}


def hardware_line(m: dict) -> str:
    mem = f", {m['memory_gib']:.0f} GiB RAM" if m.get("memory_gib") else ""
    return (f"{m['cpu']} ({m['cpus']} logical cores){mem}; GPU: {m.get('gpu') or 'none'}; "
            f"{m['platform']}; Python {m['python']}, onnxruntime {m['onnxruntime']}")


def result_stem(host: str, day: dt.date) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", host).strip("-.") or "host"
    return f"{safe}-{day.isoformat()}"


# --- the peer: Notochord in a virtual environment of its own ----------------------------------


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def torch_pin() -> str:
    """The torch of this environment (a CPU build here), so pip takes it from the same place."""
    try:
        v = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        v = DEFAULT_TORCH
    return f"torch=={v.split('+')[0]}"


def _peer_imports(py: Path, run) -> bool:
    done = run([str(py), "-c", "import notochord, torch"], capture_output=True, text=True,
               timeout=300)
    return done.returncode == 0


def ensure_peer_venv(venv: Path, run=subprocess.run, python: str = sys.executable) -> Path:
    """The venv's python with notochord importable; creates and fills the venv when needed.

    torch goes in first, pinned, so that nothing pulls a multi-GB CUDA build; notochord
    goes in without its dependencies (its pins ask for an older torch), then the few it
    imports. ``run`` is ``subprocess.run`` (a stand-in in the tests).
    """
    py = venv_python(venv)
    if py.exists() and _peer_imports(py, run):
        return py
    pin = torch_pin()
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [
        ([python, "-m", "venv", str(venv)], "creating the virtual environment"),
        (pip + [pin], f"installing {pin}"),
        (pip + ["--no-deps", f"notochord=={NOTOCHORD_VERSION}"], "installing notochord"),
        (pip + [pin, *PEER_DEPS], "installing notochord's dependencies"),
    ]
    for cmd, what in steps:
        log(f"peer: {what} in {venv}")
        done = run(cmd, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            last = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise BenchError(f"peer setup failed {what} ({last[0][:200]}); "
                             f"delete {venv} and rerun, or pass --no-peer")
    if not _peer_imports(py, run):
        raise BenchError(f"notochord does not import in {venv}; delete it and rerun, "
                         "or pass --no-peer")
    return py


def run_peer(py: Path, events: list, warmup: int = 20, run=subprocess.run) -> dict:
    """Notochord's feed and query per event, timed in its venv; JSON from the script."""
    script = BENCH_DIR / "notochord_timing.py"
    done = run([str(py), str(script), str(warmup)], input=json.dumps(events),
               capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"the Notochord timing failed ({last[0][:200]})")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise BenchError("the Notochord timing printed no JSON") from None


# --- results -------------------------------------------------------------------------------------


def validate(res: dict) -> list[str]:
    """Problems with a result against the schema; empty when it is sound."""
    problems = []
    for key in ("schema", "host", "date", "command", "machine", "model", "benchmarks"):
        if key not in res:
            problems.append(f"missing {key}")
    for name, bench in res.get("benchmarks", {}).items():
        if name not in BENCHMARKS:
            problems.append(f"unknown benchmark {name}")
        for cname, c in bench.get("configs", {}).items():
            for k in ("median_ms", "p99_ms", "p999_ms", "max_ms"):
                v = c.get(k)
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    problems.append(f"{name}/{cname}: {k} is {v!r}")
            if all(isinstance(c.get(k), (int, float)) for k in ("median_ms", "p99_ms", "p999_ms")):
                if not c["median_ms"] <= c["p99_ms"] <= c["p999_ms"]:
                    problems.append(f"{name}/{cname}: percentiles out of order")
    return problems


def _row(label: str, c: dict | None, bar: str = "") -> str | None:
    if not c:
        return None
    return (f"| {label} | {c['median_ms']:.3f} | {c['p99_ms']:.3f} | {c['p999_ms']:.3f} | "
            f"{c['max_ms']:.3f} | {bar} |")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def markdown(res: dict) -> str:
    """The README's "Performance" section for the machine that made ``res``."""
    m, b = res["machine"], res["benchmarks"]
    mod = res["model"]
    cfg = lambda bench, name: b.get(bench, {}).get("configs", {}).get(name)  # noqa: E731
    lines = [
        "## Performance", "",
        f"Measured with `{res['command']}` on {res['date'][:10]} ({res['elapsed_s']:.0f} s).",
        f"Hardware: {hardware_line(m)}.",
        f"Model: {mod['dir']} ({mod.get('n_layer')} layers, d_model {mod.get('d_model')}, "
        f"context {mod.get('context')}{', random weights' if mod.get('random_weights') else ''}).",
    ]
    if m["loadavg_before"] > 0.5 * (m["cpus"] or 1):
        lines.append(f"**Measured with other work on the machine** (load average "
                     f"{m['loadavg_before']:.1f} before, {m.get('loadavg_after', 0):.1f} after "
                     f"on {m['cpus']} cores): figures are pessimistic.")
    lines += ["", "| what | median ms | p99 ms | p99.9 ms | max ms | bar |",
              "|---|---:|---:|---:|---:|---|"]
    dec = b.get("decode", {}).get("configs", {})
    for name in sorted(dec):
        if name.startswith(("ort_", "torch_")) and ("fill50" in name or name.endswith("/roll")):
            lines.append(_row(f"decode step, {name}", dec[name]))
    lines.append(_row("note in -> tokens in the engine", cfg("ingest", "note_in_to_fed")))
    j = b.get("jam", {})
    late = cfg("jam", "first_note_lateness")
    if late:
        lines.append(_row("call end: first answer note - its planned beat (JACK, MIDI clock)",
                          late, f"<= {BAR_LATE_MS:g} ms: {j.get('bar_ok')}"))
    lines.append(_row("call end (silence) -> first answer note", cfg("jam",
                                                                     "call_end_to_first_note")))
    tr = b.get("trading", {})
    on_line = cfg("trading", "answer_on_line")
    if on_line:
        lines.append(_row("trading: first answer note - its bar line (JACK, MIDI clock)", on_line,
                          f"<= {BAR_TRADING_MS:g} ms: {tr['on_line']}/{tr['trades']} "
                          f"({100 * tr['on_line_share']:.0f}%)"))
    ho = b.get("handover", {})
    on_line = cfg("handover", "answer_on_line")
    if on_line:
        lines.append(_row("predicted hand-over: first answer note - the bar line after the call "
                          "(JACK)", on_line, f"<= {BAR_HANDOVER_MS:g} ms: {ho['on_line']}/"
                          f"{ho['trades']} ({100 * ho['on_line_share']:.0f}%)"))
    for cond in ("idle", "loaded"):
        lines.append(_row(f"scheduling error via JACK, {cond}", cfg("schedule", f"jack_{cond}")))
    lines += isolation_rows(b)
    pn = b.get("per_note", {})
    lines.append(_row("improv per event: feed a played event", cfg("per_note", "improv_feed")))
    lines.append(_row("improv per event: generate one", cfg("per_note", "improv_generate")))
    lines.append(_row("Notochord per event: feed", cfg("per_note", "notochord_feed")))
    lines.append(_row("Notochord per event: query", cfg("per_note", "notochord_query")))
    lines = [ln for ln in lines if ln is not None]
    lines.append("")
    if "ratio" in pn:
        lines.append(
            f"Model cost per note event (medians; an event is a note-on or a note-off, as in "
            f"Notochord): improv {pn['improv_ms']:.3f} ms (the dearer of feeding a played event "
            f"and generating one: all the tokens of the event, {pn['tokens_per_event']:.2f} on "
            f"average, {pn['tokens_per_note']:.2f} per note) against Notochord "
            f"{pn['notochord']} {pn['notochord_ms']:.3f} ms (feed + {pn['notochord_query']} per "
            f"event; default architecture, {pn['notochord_parameters'] / 1e6:.1f}M parameters, "
            f"torch {pn['notochord_torch']}): ratio {pn['ratio']:.3f}, bar <= {BAR_RATIO:g}: "
            f"{pn['bar_ok']}. Feed against feed {pn['ratio_feed']:.3f}; generate against feed + "
            f"query {pn['ratio_generate']:.3f}. One torch thread, one ORT thread.")
    g = b.get("generation", {})
    for kind, what in (("corpus_paced", "stepping real music"), ("free", "free sampling")):
        if kind in g:
            lines.append(f"Generation speed, {what}: {g[kind]['realtime_factor']:.1f} s of "
                         f"music per s of compute ({g[kind]['tokens']} tokens).")
    if "startup" in j:
        s, mem = j["startup"], j.get("memory_after_start", {})
        lines.append(f"`improv jam` start-up: ports after {s['ports_s']:.2f} s, ready (first "
                     f"state printed) after {s['ready_s']:.2f} s; resident memory "
                     f"{mem.get('VmRSS', float('nan')):.0f} MiB after start-up, peak "
                     f"{j.get('memory_after_calls', {}).get('VmHWM', float('nan')):.0f} MiB.")
    if tr.get("configs", {}).get("answer_on_line"):
        lines.append(
            f"Trading (`call_bars=2`, {tr['bpm']:g} BPM, `improv jam --clock-out` over JACK): "
            f"{tr['trades']} two-bar calls played from the jam's bar lines, some held across the "
            f"hand-over line; {tr['on_line']} of {tr['trades']} answers started within "
            f"{BAR_TRADING_MS:g} ms of their planned bar line's clock pulse, {tr['right_length']} "
            f"of {tr['trades']} ended by the bar line 2 bars later "
            f"(+{tr['end_tolerance_ms']:g} ms); stuck notes at the end: "
            f"{len(tr['stuck_notes'])}; clock pulses lost on the way: "
            f"{tr.get('pulses_missing')}."
            + (f" {len(tr['jam_restarts'])} jam(s) that did not hear the player's probe note "
               f"were replaced." if tr.get("jam_restarts") else ""))
    if ho.get("configs", {}).get("answer_on_line"):
        late = ho["configs"]["answer_on_line"]
        lines.append(
            f"Predicted hand-over (the default, `call_bars=0`, {ho['bpm']:g} BPM, over JACK): "
            f"{ho['trades']} two-bar calls whose last note ends before the line, some a moment "
            f"before it; {ho['on_line']} of {ho['trades']} answers came in within "
            f"{BAR_HANDOVER_MS:g} ms of the bar line after the call (median "
            f"{late['median_ms']:+.1f} ms), {ho['right_length']} of {ho['trades']} lasted the "
            f"call's 2 bars; stuck notes at the end: {len(ho['stuck_notes'])}.")
    sch = b.get("schedule", {})
    if sch:
        lines.append(
            f"Scheduling: one message per tick (24 a beat, 120 BPM) for {sch['seconds']:g} s "
            f"per condition; error = arrival at a JACK client - deadline, so it includes JACK's "
            f"period (64 frames at 48 kHz = 1.33 ms). The scheduler's own stats() (send time - "
            f"deadline): p99 idle {_ms(sch.get('stats_idle_p99_ms'))}, loaded "
            f"{_ms(sch.get('stats_loaded_p99_ms'))}; real-time priority: {sch.get('realtime')}.")
    lines += isolation_notes(b)
    for name, why in res.get("skipped", {}).items():
        lines.append(f"Not measured: {name} ({why}).")
    if res.get("plots"):
        lines.append("Plots: " + ", ".join(f"`{p}`" for p in res["plots"]) + ".")
    return "\n".join(lines) + "\n"


ISO_RUNS = (("io_ui_hog", "I/O process, UI 160x48, CPU hog"),
            ("inproc_ui_hog", "--in-process, UI 160x48, CPU hog"),
            ("io_ui", "I/O process, UI 160x48, no hog"))


def isolation_rows(b: dict) -> list[str | None]:
    """Table rows of the isolation and clock_follow benchmarks (issue 11)."""
    iso, fol = b.get("isolation", {}), b.get("clock_follow", {})
    rows: list[str | None] = []
    for name, what in ISO_RUNS:
        c = iso.get("configs", {}).get(f"{name}/arrival")
        run = iso.get("runs", {}).get(name)
        if not c or not run:
            continue
        send = run["jam_latency"].get("schedule_p99_ms")
        rows.append(_row(f"isolation: answer arrival at JACK - deadline ({what}, dense answers)",
                         c, f"p99 <= {BAR_ISO_ARRIVAL_MS:g} ms: {run['bar_arrival_ok']}; send "
                         f"p99 {_ms(send)} <= {BAR_ISO_SEND_MS:g} ms: {run['bar_send_ok']}"))
    for name, what in (("decode_isolated_roll", "bench/decode.py, 1 thread, across rolls"),
                       ("decode_isolated_fill50", "bench/decode.py, 1 thread, fill 50%")):
        rows.append(_row(f"decode step alone, same run ({what})", iso.get("configs", {}).get(name)))
    for name, what in (("jitter", "a master with +-1 ms uniform jitter per pulse"),
                       ("jack_midi_clock", "jack_midi_clock (sample accurate)")):
        c = fol.get("configs", {}).get(f"{name}/offset")
        run = fol.get("runs", {}).get(name)
        if c and run:
            rows.append(_row(f"clock follow: answer note at JACK - master's grid ({what})", c,
                             f"p99 <= {BAR_FOLLOW_MS:g} ms: {run['bar_ok']}"
                             if name == "jitter" else ""))
    return rows


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def isolation_notes(b: dict) -> list[str]:
    """The paragraph under the table for the issue-11 rows."""
    iso, fol = b.get("isolation", {}), b.get("clock_follow", {})
    out = []
    if iso.get("runs"):
        alone = iso["configs"]["decode_isolated_roll"]["median_ms"]
        parts = []
        for name, what in ISO_RUNS:
            run = iso["runs"].get(name)
            if not run:
                continue
            lat = run["jam_latency"]
            parts.append(
                f"{what}: decode median {_ms(lat.get('decode_median_ms'))} "
                f"({_ratio(run['decode_ratio'])} alone; bar <= {BAR_DECODE_RATIO:g}x: "
                f"{run['bar_decode_ok']}), decode p99 {_ms(lat.get('decode_p99_ms'))}, send "
                f"error p99 {_ms(lat.get('schedule_p99_ms'))}, late (jam) {lat.get('late')}, "
                f"note in -> tokens fed median {_ms(lat.get('ingest_median_ms'))} p99 "
                f"{_ms(lat.get('ingest_p99_ms'))}, dropped {lat.get('dropped')}, "
                f"arrivals > 5 ms here {run['late_here']}, {run['notes']} notes in "
                f"{run['answers']} answers, keys left down {len(run['stuck_notes'])}, "
                f"double strikes {run.get('double_strikes')}"
                + (f", {len(run['jam_restarts'])} deaf jam(s) replaced"
                   if run.get("jam_restarts") else ""))
        out.append(
            f"Real-time isolation ({iso['seconds']:g} s of calls per jam; `improv jam` at 120 "
            f"BPM with `--clock-out`, density 1, notes <= a 16th, no humanize or swing; the "
            f"deadline grid is fitted to the earliest arrivals of the jam's own clock pulses, "
            f"so arrival - deadline includes JACK's 1.33 ms period; the jam's own figures from "
            f"its session API socket). Decode step alone (bench/decode.py, same run): median "
            f"{alone:.3f} ms. " + "; ".join(parts) + ".")
    if fol.get("runs"):
        parts = []
        j = fol["runs"].get("jitter")
        if j:
            m = fol["configs"]["jitter/master_send_minus_ideal"]
            parts.append(f"our master sent its pulses {m['median_ms']:+.2f} ms (median), "
                         f"p99 {m['p99_ms']:+.2f} ms, min {j['master_send_min_ms']:+.2f} ms off "
                         f"their ideal times (+-{j['jitter_ms']:g} ms asked, a Python thread "
                         f"at SCHED_FIFO), the grid being its ideal times")
        k = fol["runs"].get("jack_midi_clock")
        if k:
            parts.append(f"jack_midi_clock's grid is the line through its pulses heard here "
                         f"within 0.5 s of each note, placed on the 90th percentile of their "
                         f"arrivals (pulse "
                         f"gap median {k['pulse_gap_ms']['median']:.3f} ms: JACK's dummy "
                         f"driver runs off the system clock; fit spread p99 "
                         f"{k['pulse_spread_ms']:.2f} ms)")
        out.append(f"Clock follow (`improv jam --clock midi --no-tui`, 120 BPM, the same dense "
                   f"answers, {fol['seconds']:g} s of calls): " + "; ".join(parts) + ".")
    for bench, what in ((iso, "isolation"), (fol, "clock_follow")):
        for name, why in bench.get("skipped", {}).items():
            out.append(f"Not measured: {what} {name} ({why[:300]}).")
    return out


# --- the suite -----------------------------------------------------------------------------------


def find_model(arg: str | None) -> tuple[Path, bool]:
    """--model, else a shipped model, else a random-weight default-config model (cached)."""
    if arg:
        return Path(arg), False
    shipped = sorted(p.parent for p in (ROOT / "models").glob("*/model.onnx"))
    if shipped:
        return shipped[0], False
    from improv.live.engine import ModelError, read_model_dir

    cache = Path.home() / ".cache" / "improv" / "bench" / "random-model"
    try:
        read_model_dir(cache)
    except ModelError:  # missing, or made by an older improv
        log(f"no shipped model: building a random-weight model of the default config in {cache}")
        try:
            load_bench("decode").build_random_model(cache)
        except ImportError as e:
            raise BenchError(f"no model to time: pass --model DIR, or install torch to build a "
                             f"random one ({e})") from None
    return cache, True


def _shown_path(p: Path) -> str:
    """Relative to the repository when inside it, as a README shows it."""
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "improv bench",
        description="Run the latency benchmarks: a results table, plots and a peer comparison.")
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    ap.add_argument("--model", help="model directory (default: shipped model, else random)")
    ap.add_argument("--out", default=str(BENCH_DIR / "results"), help="results folder")
    ap.add_argument("--only", default="", help=f"comma list of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--skip", default="", help="comma list of benchmarks to leave out")
    ap.add_argument("--no-peer", action="store_true", help="do not time Notochord")
    ap.add_argument("--peer-venv", default="~/.cache/improv/bench/notochord-venv",
                    help="the peer's virtual environment (made when missing)")
    ap.add_argument("--sched-seconds", type=float, default=None,
                    help="seconds of clock grid per condition (default 75, quick 4)")
    ap.add_argument("--calls", type=int, default=None, help="calls played into the jam "
                    "(default 6, quick 2)")
    ap.add_argument("--trades", type=int, default=None, help="2-bar calls traded with the "
                    "jam in the trading benchmark (default 10, quick 3)")
    ap.add_argument("--iso-seconds", type=float, default=None,
                    help="seconds of calls and answers per jam in the isolation and "
                    "clock_follow benchmarks (default 60, quick 15)")
    ap.add_argument("--jack", choices=("own", "running"), default="own",
                    help="JACK server for the MIDI benchmarks: a private dummy one started "
                    "for the run (default), or the running one (started if absent)")
    ap.add_argument("--no-plots", action="store_true", help="JSON and markdown only")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    names = [x for x in args.only.split(",") if x] or list(BENCHMARKS)
    names = [x for x in names if x not in args.skip.split(",")]
    bad = [x for x in names if x not in BENCHMARKS]
    if bad:
        print(f"{prog or 'improv bench'}: unknown benchmark {', '.join(bad)}; choose from "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    args.sched_seconds = args.sched_seconds or (4.0 if args.quick else 75.0)
    args.calls = args.calls or (2 if args.quick else 6)
    args.trades = args.trades or (3 if args.quick else 10)
    args.iso_seconds = args.iso_seconds or (15.0 if args.quick else 60.0)
    t0 = time.monotonic()
    sys.setswitchinterval(0.001)  # as `improv jam` runs: the live threads hand over the GIL
    machine = machine_info()
    try:
        model, random_weights = find_model(args.model)
        from improv.live.engine import read_model_dir

        cfg, _ = read_model_dir(model)
    except (BenchError, ValueError) as e:
        print(f"{prog or 'improv bench'}: {e}", file=sys.stderr)
        return 2
    suite = load_bench("suite").Suite(args, model)
    shown = "python bench/run.py" if prog in (None, "bench/run.py") else prog
    res = suite.res
    res.update(schema=SCHEMA, host=machine["host"],
               date=dt.datetime.now().isoformat(" ", "seconds"),
               command=" ".join([shown, *argv]), quick=args.quick,
               machine=machine, model={"dir": _shown_path(model),
                                       "random_weights": random_weights,
                                       **{k: cfg.get(k) for k in ("n_layer", "n_head", "d_model",
                                                                  "d_ff", "context")}})
    needs_jack = {"schedule", "jam", "trading", "handover", "isolation",
                  "clock_follow"} & set(names)
    with contextlib.ExitStack() as stack:
        if needs_jack:
            try:
                server = load_bench("live").jack_server(shared=args.jack == "running")
                res["jack"] = stack.enter_context(server)
            except Exception as e:
                res["skipped"].update({n: f"no JACK server: {e}" for n in needs_jack})
                names = [n for n in names if n not in needs_jack]
        for name in names:
            log(f"{name} ...")
            t = time.monotonic()
            try:
                res["benchmarks"][name] = getattr(suite, name)()
                res["benchmarks"][name]["elapsed_s"] = time.monotonic() - t
            except Exception as e:  # one broken benchmark must not lose the others
                res["skipped"][name] = f"{type(e).__name__}: {e}"
                log(f"  failed: {res['skipped'][name]}")
    machine["loadavg_after"] = os.getloadavg()[0]
    if "decode" in res["benchmarks"] and "ort_cuda" not in res["benchmarks"]["decode"]["skipped"]:
        machine["gpu"] = "CUDA (onnxruntime)"
    res["elapsed_s"] = time.monotonic() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(machine["host"], dt.date.today())
    res["plots"] = [] if args.no_plots else load_bench("plots").plot_all(res, suite.samples,
                                                                          out, stem)
    problems = validate(res)
    if problems:
        log("result schema problems: " + "; ".join(problems))
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    md = markdown(res)
    (out / f"{stem}.md").write_text(md)
    print(md, end="")
    log(f"wrote {out / stem}.json, .md{' and plots' if res['plots'] else ''} in "
        f"{res['elapsed_s']:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
