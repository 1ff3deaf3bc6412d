"""The benchmark's pictures: latency histograms, decode cost against context, CPU and GPU.

``plot_all(result, samples, out, stem)`` writes ``STEM-hist.png`` (one histogram
per measured distribution), ``STEM-context.png`` (decode step against the
position in the context: ORT and torch with the KV cache, torch recomputing the
window) and, when a GPU ran, ``STEM-cpu-gpu.png``; it returns the file names.
Without matplotlib it writes nothing and says so. Part of the bench package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def histograms(plt, samples: dict[str, np.ndarray], path: Path) -> bool:
    items = [(k, np.asarray(v)) for k, v in samples.items() if np.asarray(v).size]
    if not items:
        return False
    cols = 2
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, (name, x) in zip(axes.flat, items, strict=False):
        hi = np.percentile(x, 99.9)
        lo = min(0.0, float(x.min()))
        ax.hist(np.clip(x, lo, hi), bins=60, color="#4477aa")
        med, p99 = np.median(x), np.percentile(x, 99)
        ax.axvline(med, color="k", lw=1)
        ax.axvline(p99, color="#cc3311", lw=1, ls="--")
        ax.set_title(f"{name}: median {med:.3f}, p99 {p99:.3f} ms (n={x.size})", fontsize=9)
        ax.set_xlabel("ms (clipped at p99.9)", fontsize=8)
        if x.size >= 200:  # a long tail shows on a log scale; a few samples read better linear
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _by_position(configs: dict) -> dict[str, list[tuple[int, float, float]]]:
    groups: dict[str, list] = {}
    for name, c in configs.items():
        base, _, fill = name.partition("/fill")
        if fill and "position" in c:
            groups.setdefault(base, []).append((c["position"], c["median_ms"], c["p99_ms"]))
    return {k: sorted(v) for k, v in groups.items()}


def context_plot(plt, configs: dict, path: Path) -> bool:
    groups = _by_position(configs)
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for base, pts in sorted(groups.items()):
        x, med, p99 = (np.array(v) for v in zip(*pts, strict=True))
        label = {"torch_nocache": "torch, no cache (whole window)",
                 "torch_cached": "torch, KV cache"}.get(base, f"{base} (KV cache)")
        ax.errorbar(x, med, yerr=[np.zeros_like(med), p99 - med], marker="o", capsize=3,
                    label=label)
    ax.set_yscale("log")
    ax.set_xlabel("position in the context (tokens)")
    ax.set_ylabel("ms per token (median, bar to p99)")
    ax.set_title("decode step against context length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def cpu_gpu_plot(plt, configs: dict, path: Path) -> bool:
    groups = _by_position(configs)
    if "ort_cuda" not in groups or "ort_cpu_1t" not in groups:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.4
    for i, base in enumerate(("ort_cpu_1t", "ort_cuda")):
        pts = groups[base]
        ax.bar(np.arange(len(pts)) + (i - 0.5) * width, [p[1] for p in pts], width, label=base)
    ax.set_xticks(np.arange(len(groups["ort_cpu_1t"])),
                  [str(p[0]) for p in groups["ort_cpu_1t"]])
    ax.set_xlabel("position in the context (tokens)")
    ax.set_ylabel("median ms per token")
    ax.set_title("decode step: CPU against GPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_all(res: dict, samples: dict[str, np.ndarray], out: Path, stem: str) -> list[str]:
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    configs = res["benchmarks"].get("decode", {}).get("configs", {})
    for suffix, fn, data in (("hist", histograms, samples), ("context", context_plot, configs),
                             ("cpu-gpu", cpu_gpu_plot, configs)):
        path = out / f"{stem}-{suffix}.png"
        if fn(plt, data, path):
            written.append(path.name)
    return written
