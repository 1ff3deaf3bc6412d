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
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from improv.core import paths
from improv.core.cli_help import with_examples

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


def cpu_steal_s() -> float | None:
    """CPU seconds the hypervisor ran something else while this VM wanted its cores (all
    cores, from /proc/stat's steal column); None where there is no such count. A jam that
    loses tens of ms at once this way is late by that much whatever it does, so each live
    run reports what was stolen during it."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


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


# --- the suite -----------------------------------------------------------------------------------


def find_model(arg: str | None) -> tuple[Path, bool]:
    """--model, else a shipped model, else a random-weight default-config model (cached)."""
    if arg:
        return Path(arg), False
    shipped = sorted(p.parent for p in (ROOT / "models").glob("*/model.onnx"))
    if shipped:
        return shipped[0], False
    from improv.live.engine import ModelError, read_model_dir

    cache = paths.cache_dir() / "bench" / "random-model"
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
        description="Run the latency benchmarks: a results table, plots and a peer comparison.",
        **with_examples(
            "improv bench --quick --no-peer            # a minute, no peer comparison",
            "improv bench --only isolation,clock_follow --no-peer --no-plots"))
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
    from bench.report import markdown, validate

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
