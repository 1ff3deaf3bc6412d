"""Per-token decode latency: ONNX Runtime with the KV cache against torch, at each fill and a roll.

Measures ``improv.live.engine.Engine.step`` (ONNX Runtime, CPU, 1 and 2 intra-op threads; CUDA
when a GPU really runs) at context fill 10%, 50% and 100% and across context rolls, the
same model in torch eager with its KV cache (``GPT.forward_cached``) and torch eager
recomputing the whole window every token (fewer steps; the count is in the results). A
fixed-fill step is timed at one position: the step runs, then ``rewind(1)`` (untimed)
puts the position back. A copy check times a step at C = 512 and 1024 bound to the
cache (the engine), through plain ``session.run`` with numpy inputs, and with an
explicit copy of the cache per step, to show whether anything O(C) is copied.

    python bench/decode.py [--model DIR] [--steps 5000] [--out bench/results] [--json] [--plot]

Writes ``decode.json`` and ``decode.md`` under ``--out`` (``decode.png`` with ``--plot``).
With ``--json`` stdout is one JSON object; progress goes to stderr. The three ratios the
latency bar asks for are under ``ratios``. This script may import torch; the engine does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from improv.core import tokens as tk
from improv.live.engine import Engine, ModelError

ROOT = Path(__file__).resolve().parents[1]
FILLS = (0.1, 0.5, 1.0)
GAPS_MS = (1.0, 5.0, 20.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summarize(seconds: np.ndarray | list[float]) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)), "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()), "steps": int(ms.size),
    }


def random_tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(tk.TIME_SHIFT_BASE, tk.VOCAB_SIZE, n).tolist()


# --- models ------------------------------------------------------------------------------


def build_random_model(out: Path, context: int | None = None, like: dict | None = None) -> Path:
    """A random-weight model of the default config (or ``like``), exported to ONNX."""
    import torch

    from improv.learn.export import export_model
    from improv.learn.model import GPT, ModelConfig, default_styles, save_model

    torch.manual_seed(0)
    kw = {k: like[k] for k in ("n_layer", "n_head", "d_model", "d_ff") if like and k in like}
    if context is not None:
        kw["context"] = context
    save_model(GPT(ModelConfig(**kw)).eval(), out, default_styles())
    export_model(out)
    return out


def find_model(arg: str | None, tmp: Path) -> tuple[Path, bool]:
    """(model dir, random weights?): --model, else the shipped model, else a random one."""
    if arg:
        return Path(arg), False
    shipped = sorted(p.parent for p in (ROOT / "models").glob("*/model.onnx"))
    if shipped:
        default = ROOT / "models" / "default"
        return (default if default in shipped else shipped[0]), False
    log("no shipped model in models/: building a random-weight model of the default config")
    return build_random_model(tmp / "random"), True


# --- measurements ------------------------------------------------------------------------


def fill_position(context: int, fill: float) -> int:
    """Position of the timed token: at fill 1.0 it takes the last slot."""
    return max(1, min(context - 1, round(fill * context) - 1))


def ort_fixed_fill(model: Path, provider: str, threads: int, fill: float, steps: int) -> dict:
    e = Engine(model, provider=provider, threads=threads, roll_at=2.0, background=False)
    pos = fill_position(e.context, fill)
    e.feed(random_tokens(pos - 1, seed=1))
    toks = random_tokens(steps + 200, seed=2)
    times = np.empty(steps)
    for i, t in enumerate(toks):
        t0 = time.perf_counter()
        e.step(t)
        dt = time.perf_counter() - t0
        e.rewind(1)
        if i >= 200:
            times[i - 200] = dt
    assert e.position == pos and e.rolls == 0
    return {**summarize(times), "position": pos, "context": e.context}


def ort_roll(model: Path, provider: str, threads: int, steps: int, pace_ms: float = 0.0,
             inline_chunk: int | None = None, gap_ms: float = 0.0) -> dict:
    """Steps across many rolls: flat out, one step every ``pace_ms`` (a live set's rhythm),
    or ``gap_ms`` of idle time before each step (the pause a running jam leaves, from its
    ``decode_gap_ms``: a step after a pause finds the weights out of the CPU's caches).

    ``inline_chunk`` None is the engine's default roll; 0 re-encodes in a background thread.
    """
    kw = {} if inline_chunk is None else {"inline_chunk": inline_chunk}
    e = Engine(model, provider=provider, threads=threads, background=True, **kw)
    inline_chunk = e.inline_chunk
    e.feed(random_tokens(e.roll_at - 64, seed=3))
    for t in random_tokens(200, seed=4):  # warm-up (includes the first roll's session start)
        e.step(t)
    times, rolling = np.empty(steps), np.zeros(steps, dtype=bool)
    rolls0, waits0 = e.rolls, e.roll_waits
    next_at = time.perf_counter()
    for i, t in enumerate(random_tokens(steps, seed=5)):
        if pace_ms:
            next_at += pace_ms / 1e3
            time.sleep(max(0.0, next_at - time.perf_counter()))
        elif gap_ms:
            time.sleep(gap_ms / 1e3)
        before, r = e.rolling, e.rolls
        t0 = time.perf_counter()
        e.step(t)
        times[i] = time.perf_counter() - t0
        rolling[i] = before or e.rolls != r
    e.close()
    during = summarize(times[rolling]) if rolling.any() else {}
    outside = summarize(times[~rolling]) if (~rolling).any() else {}
    return {
        **summarize(times), "rolls": e.rolls - rolls0, "roll_waits": e.roll_waits - waits0,
        "steps_during_roll": int(rolling.sum()), "roll_max_ms": during.get("max_ms", 0.0),
        "roll_median_ms": during.get("median_ms", 0.0),
        "roll_p99_ms": during.get("p99_ms", 0.0),
        "outside_roll_p99_ms": outside.get("p99_ms", 0.0),
        "outside_roll_max_ms": outside.get("max_ms", 0.0), "context": e.context,
        "roll_at": e.roll_at, "keep": e.keep, "pace_ms": pace_ms, "gap_ms": gap_ms,
        "inline_chunk": inline_chunk,
    }


def torch_cached(model: Path, fill: float, steps: int) -> dict:
    import torch

    from improv.learn.model import load_model

    gpt = load_model(model)
    C = gpt.cfg.context
    pos = fill_position(C, fill)
    keys, values = gpt.empty_cache()
    with torch.no_grad():
        _, nk, nv = gpt.forward_cached(torch.tensor([random_tokens(pos, seed=1)]), 0, keys, values)
        keys[:, :, :, :pos], values[:, :, :, :pos] = nk, nv
        times = np.empty(steps)
        for i, t in enumerate(random_tokens(steps + 50, seed=2)):
            t0 = time.perf_counter()
            logits, nk, nv = gpt.forward_cached(torch.tensor([[t]]), pos, keys, values)
            keys[:, :, :, pos], values[:, :, :, pos] = nk[:, :, :, 0], nv[:, :, :, 0]
            out = logits[0, -1].numpy()  # what a caller would hand the sampler
            dt = time.perf_counter() - t0
            if i >= 50:
                times[i - 50] = dt
    del out
    return {**summarize(times), "position": pos, "context": C}


def torch_nocache(model: Path, fill: float, steps: int) -> dict:
    import torch

    from improv.learn.model import load_model

    gpt = load_model(model)
    pos = fill_position(gpt.cfg.context, fill)
    window = torch.tensor([random_tokens(pos + 1, seed=1)])
    times = np.empty(steps)
    with torch.no_grad():
        for i in range(steps + 5):
            t0 = time.perf_counter()
            gpt(window)[0][0, -1].numpy()
            dt = time.perf_counter() - t0
            if i >= 5:
                times[i - 5] = dt
    return {**summarize(times), "position": pos, "context": gpt.cfg.context}


def copy_check(model_dir: Path, steps: int) -> dict:
    """Full-fill step: bound cache vs session.run(numpy) vs an explicit cache copy per step."""
    e = Engine(model_dir, provider="cpu", roll_at=2.0, background=False)
    C = e.context
    e.feed(random_tokens(C - 2, seed=1))
    sess = e._hot.decode  # the engine's own session, so only the calling convention differs
    live = e._caches[0]
    feed = {"tokens": np.array([[100]], np.int64), "position": np.array([C - 1], np.int64),
            "past_keys": live.keys, "past_values": live.values}
    variants = {
        "bound": lambda: (e.step(100), e.rewind(1)),
        "run_numpy": lambda: sess.run(None, feed),
        "bound_plus_copy": lambda: (live.keys.copy(), live.values.copy(), e.step(100),
                                    e.rewind(1)),
    }
    out = {}
    for name, fn in variants.items():
        for _ in range(100):
            fn()
        times = np.empty(steps)
        for i in range(steps):
            t0 = time.perf_counter()
            fn()
            times[i] = time.perf_counter() - t0
        out[name] = {**summarize(times), "context": C}
    return out


# --- report ------------------------------------------------------------------------------


def ratios(configs: dict) -> dict:
    r: dict = {}
    ort1 = {f: configs.get(f"ort_cpu_1t/fill{round(f * 100)}") for f in FILLS}
    tc = {f: configs.get(f"torch_cached/fill{round(f * 100)}") for f in FILLS}
    speed = [tc[f]["median_ms"] / ort1[f]["median_ms"] for f in FILLS if tc[f] and ort1[f]]
    if speed:
        r["ort_cpu_vs_torch_cached_speedup"] = min(speed)
        r["ort_cpu_vs_torch_cached_speedup_per_fill"] = speed
        r["speedup_ok"] = min(speed) >= 3.0
    if ort1[1.0] and ort1[0.1]:
        r["fill100_over_fill10"] = ort1[1.0]["median_ms"] / ort1[0.1]["median_ms"]
        r["fill_ok"] = r["fill100_over_fill10"] <= 1.3
    roll = configs.get("ort_cpu_1t/roll")
    if roll:
        r["roll_max_ms"] = roll["roll_max_ms"]
        r["roll_ok"] = roll["roll_max_ms"] <= 3.0
    paced = configs.get("ort_cpu_1t/roll_thread_paced2ms")
    if paced:
        r["roll_thread_paced_max_ms"] = paced["roll_max_ms"]
    inline = configs.get("ort_cpu_1t/roll_thread")
    if inline:
        r["roll_thread_max_ms"] = inline["roll_max_ms"]
    return r


def markdown(res: dict) -> str:
    m = res["model"]
    lines = [
        f"# Decode latency ({m['dir']}{', random weights' if m['random_weights'] else ''})",
        "",
        f"Model: {m['n_layer']} layers, d_model {m['d_model']}, {m['n_head']} heads, "
        f"context {m['context']}. Machine: {res['machine']['cpus']} CPUs, load average "
        f"{res['machine']['loadavg_before']:.2f} before / {res['machine']['loadavg_after']:.2f} "
        f"after; onnxruntime {res['machine']['onnxruntime']}, torch {res['machine']['torch']}.",
        "",
        "| configuration | steps | median ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in res["configs"].items():
        lines.append(
            f"| {name} | {c['steps']} | {c['median_ms']:.3f} | {c['p99_ms']:.3f} | "
            f"{c['p999_ms']:.3f} | {c['max_ms']:.3f} |"
        )
    lines += ["", "| ratio | value | bar |", "|---|---:|---|"]
    r = res["ratios"]
    if "ort_cpu_vs_torch_cached_speedup" in r:
        lines.append(f"| torch cached / ORT CPU median (worst fill) | "
                     f"{r['ort_cpu_vs_torch_cached_speedup']:.2f}x | >= 3x: {r['speedup_ok']} |")
    if "fill100_over_fill10" in r:
        lines.append(f"| ORT median at 100% / at 10% fill | {r['fill100_over_fill10']:.3f} | "
                     f"<= 1.3: {r['fill_ok']} |")
    if "roll_max_ms" in r:
        lines.append(f"| max step during a roll (ms) | {r['roll_max_ms']:.3f} | "
                     f"<= 3 ms: {r['roll_ok']} |")
    if "roll_thread_paced_max_ms" in r:
        lines.append(f"| max step during a roll, background-thread re-encode, one step per "
                     f"2 ms (ms) | {r['roll_thread_paced_max_ms']:.3f} | |")
    if "roll_thread_max_ms" in r:
        lines.append(f"| max step during a roll, background-thread re-encode (ms) | "
                     f"{r['roll_thread_max_ms']:.3f} | |")
    for name in ("ort_cpu_1t/roll", "ort_cpu_1t/roll_thread", "ort_cpu_1t/roll_thread_paced2ms"):
        roll = res["configs"].get(name)
        if roll:
            lines += ["", f"{name}: {roll['rolls']} rolls, {roll['roll_waits']} waits, "
                          f"{roll['steps_during_roll']} steps while a re-encode was in flight, "
                          f"during them median {roll['roll_median_ms']:.3f} ms, p99 "
                          f"{roll['roll_p99_ms']:.3f}, max {roll['roll_max_ms']:.3f}; other "
                          f"steps p99 {roll['outside_roll_p99_ms']:.3f}, max "
                          f"{roll['outside_roll_max_ms']:.3f}."]
    for name, why in res["skipped"].items():
        lines.append(f"\nSkipped {name}: {why}")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[str, list] = {}
    for name, c in res["configs"].items():
        base, _, fill = name.partition("/fill")
        if fill:
            groups.setdefault(base, []).append((int(fill), c["median_ms"], c["p99_ms"]))
    for base, pts in groups.items():
        pts.sort()
        x, med, p99 = zip(*pts, strict=True)
        ax.errorbar(x, med, yerr=[np.zeros(len(x)), np.subtract(p99, med)], marker="o",
                    capsize=3, label=base)
    ax.set_yscale("log")
    ax.set_xlabel("context fill (%)")
    ax.set_ylabel("ms per token (median, bar to p99)")
    ax.set_title("improv decode latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"wrote {path}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory (default: shipped model, else random)")
    ap.add_argument("--steps", type=int, default=5000, help="timed steps per configuration")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    ap.add_argument("--plot", action="store_true", help="also write decode.png")
    ap.add_argument("--no-torch", action="store_true", help="ONNX Runtime only")
    ap.add_argument("--no-copy-check", action="store_true", help="skip the C=512/1024 check")
    args = ap.parse_args(argv)
    steps = max(10, args.steps)
    nocache_steps = max(20, steps // 25)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model, random_weights = find_model(args.model, Path(tmp))
            probe = Engine(model, provider="cpu", background=False)
        except ModelError as e:
            print(f"{prog or 'bench/decode.py'}: {e}", file=sys.stderr)
            return 2
        cfg = probe.config
        res: dict = {
            "model": {"dir": str(model), "random_weights": random_weights,
                      **{k: cfg[k] for k in ("n_layer", "n_head", "d_model", "d_ff", "context")
                         if k in cfg}},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "onnxruntime": ort.__version__, "torch": None,
                        "loadavg_before": os.getloadavg()[0]},
            "steps": steps, "configs": {}, "skipped": {},
        }
        configs = res["configs"]

        def run(name: str, fn, *a) -> None:
            log(f"{name} ...")
            configs[name] = fn(*a)
            log(f"  median {configs[name]['median_ms']:.3f} ms, p99 {configs[name]['p99_ms']:.3f}"
                f", max {configs[name]['max_ms']:.3f}")

        for threads in (1, 2):
            for f in FILLS:
                run(f"ort_cpu_{threads}t/fill{round(f * 100)}", ort_fixed_fill, model, "cpu",
                    threads, f, steps)
            run(f"ort_cpu_{threads}t/roll", ort_roll, model, "cpu", threads, steps)
        run("ort_cpu_1t/roll_thread", ort_roll, model, "cpu", 1, steps, 0.0, 0)
        run("ort_cpu_1t/roll_thread_paced2ms", ort_roll, model, "cpu", 1, steps, 2.0, 0)
        for gap in GAPS_MS:  # how much a pause before a step costs it (the jam's pace)
            run(f"ort_cpu_1t/roll_gap{gap:g}ms", ort_roll, model, "cpu", 1,
                min(steps, 1000), 0.0, None, gap)
        try:
            Engine(model, provider="cuda", background=False)
            for f in FILLS:
                run(f"ort_cuda/fill{round(f * 100)}", ort_fixed_fill, model, "cuda", 1, f, steps)
            run("ort_cuda/roll", ort_roll, model, "cuda", 1, steps)
        except ModelError as e:
            res["skipped"]["ort_cuda"] = str(e)
        if not args.no_torch:
            import torch

            torch.set_num_threads(1)  # the same single core the ORT 1-thread rows get
            res["machine"]["torch"] = torch.__version__
            for f in FILLS:
                run(f"torch_cached/fill{round(f * 100)}", torch_cached, model, f, steps)
            for f in FILLS:
                run(f"torch_nocache/fill{round(f * 100)}", torch_nocache, model, f, nocache_steps)
            if not args.no_copy_check:
                for C in (512, 1024):
                    d = build_random_model(Path(tmp) / f"c{C}", context=C, like=cfg)
                    log(f"copy check C={C} ...")
                    for name, c in copy_check(d, min(steps, 2000)).items():
                        configs[f"copy_check_c{C}/{name}"] = c
        res["machine"]["loadavg_after"] = os.getloadavg()[0]
        res["ratios"] = ratios(configs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (out / "decode.md").write_text(md)
    if args.plot:
        log(plot(res, out / "decode.png"))
    if args.json:
        print(json.dumps(res))
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
