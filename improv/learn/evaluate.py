"""``improv eval``: a trained model against the n-gram baseline on the held-out split.

This module owns the quality numbers of a model:

* cross-entropy (nats, bits) and perplexity per style, for the model and for the
  Kneser-Ney baseline (:mod:`improv.learn.baseline`), scored on exactly the same tokens: every
  token of every val piece after its STYLE token;
* musical figures of continuations of held-out prompts, for the model, the baseline and the
  true continuation (the reference row): share of notes in the prompt's key, note density
  relative to the prompt, and how much of it is copied from the training split;
* the perplexity gate: the model must be at least 25% below the baseline in every style
  with enough held-out data.

The model sees what it saw in training: a STYLE token at position 0, then a crop of the
piece. Pieces longer than the context are scored with overlapping windows (see
:func:`window_plan`). Prompts, generation and the musical figures live in
:mod:`improv.learn.eval_musical`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from improv.core import tokens as tk
from improv.core.cli_help import with_examples
from improv.learn.baseline import BaselineError, NGramModel
from improv.learn.dataset import DataError, Split, default_corpus_dir, load_split, style_names
from improv.learn.eval_conversation import add_arguments as add_conversation_arguments
from improv.learn.eval_conversation import run_cli as run_conversation
from improv.learn.eval_musical import (
    MEMO_N,
    NAMES,
    MemorizationIndex,
    choose_prompts,
    density_ratio,
    estimate_key,
    generate_model,
    generate_ngram,
    in_key,
    model_context,
    note_on_pitches,
)
from improv.learn.model import ModelError, load_model, load_styles

MIN_GATE_TOKENS = 5000


class EvalError(ValueError):
    """Evaluation cannot run as asked; the message says what to do."""


# --- scoring -----------------------------------------------------------------------------


def window_plan(n_targets: int, context: int) -> list[tuple[int, int, int]]:
    """Windows ``(s, end, first)`` scoring targets 1..n_targets of a piece exactly once.

    A window feeds [STYLE] + piece[s+1 : end+1] (at most context-1 piece tokens) and scores
    the targets first..end (1-based piece positions). Later windows move by half a window
    and score only what the previous one did not, so every scored token keeps at least half
    a window of context; the last window is aligned to the piece end.
    """
    width = context - 1
    if width < 1:
        raise EvalError(f"model context {context} is too small to score anything")
    if n_targets <= width:
        return [(0, n_targets, 1)] if n_targets > 0 else []
    stride = max(1, width // 2)
    plan, s, done = [], 0, 0
    while done < n_targets:
        end = s + width
        plan.append((s, end, done + 1))
        done = end
        s = min(s + stride, n_targets - width)
    return plan


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)[0]
    if logits.dim() != 3 or logits.shape[1] != x.shape[1]:
        raise EvalError("the model must return logits [B, T, V] for every position")
    return logits


@torch.no_grad()
def model_nll(model, pieces: list[np.ndarray], batch_size=16, device="cpu") -> list[np.ndarray]:
    """Negative log-likelihood (nats) of every token after the STYLE token, per piece."""
    C, pieces = model_context(model), [np.asarray(p, dtype=np.int64) for p in pieces]
    jobs = []  # (piece index, s, end, first)
    for i, p in enumerate(pieces):
        jobs += [(i, *w) for w in window_plan(len(p) - 1, C)]
    out = [np.full(max(len(p) - 1, 0), np.nan) for p in pieces]
    for b0 in range(0, len(jobs), batch_size):
        batch = jobs[b0 : b0 + batch_size]
        T = max(end - s + 1 for _, s, end, _ in batch)
        x = torch.full((len(batch), T), tk.PAD, dtype=torch.long)
        for r, (i, s, end, _) in enumerate(batch):
            x[r, 0] = int(pieces[i][0])
            x[r, 1 : end - s + 1] = torch.from_numpy(pieces[i][s + 1 : end + 1])
        # Right padding is harmless: causal attention keeps pads out of earlier positions.
        logp = torch.log_softmax(_logits(model, x.to(device)).float(), dim=-1).cpu()
        for r, (i, s, end, first) in enumerate(batch):
            # Input position j predicts piece position s + 1 + j.
            j = torch.arange(first - s - 1, end - s)
            out[i][first - 1 : end] = -logp[r, j, x[r, j + 1]].numpy()
    return out



# --- the evaluation ----------------------------------------------------------------------


def split_pieces(split: Split) -> list[np.ndarray]:
    s = split.starts
    return [split.tokens[s[i] : s[i + 1]].astype(np.int64) for i in range(len(s) - 1)]


def fit_or_load_ngram(corpus_dir: Path, train: Split, order: int) -> tuple[NGramModel, dict]:
    """The baseline for this corpus and order; cached under the corpus dir, keyed on its data."""
    h = hashlib.sha256()
    summary = corpus_dir / "summary.json"
    if summary.is_file():
        h.update(summary.read_bytes())
    h.update(np.ascontiguousarray(train.tokens).tobytes())
    h.update(np.ascontiguousarray(train.starts).tobytes())
    path = corpus_dir / "ngram" / f"order{order}-{h.hexdigest()[:16]}.npz"
    info = {"order": order, "cache": str(path), "cached": False, "fit_seconds": None}
    if path.is_file():
        try:
            m = NGramModel.load(path)
            if m.order == order:
                return m, {**info, "cached": True, "train_tokens": m.n_tokens}
        except BaselineError:
            pass  # a stale or broken cache is refitted below
    t0 = time.perf_counter()
    m = NGramModel(order).fit(split_pieces(train))
    info.update(fit_seconds=round(time.perf_counter() - t0, 2), train_tokens=m.n_tokens)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        m.save(path)
    except OSError as e:
        info["cache"] = f"not written ({e})"
    return m, info


def _ce_row(nll_model: list[np.ndarray], nll_ngram: list[np.ndarray]) -> dict:
    n = sum(map(len, nll_model))
    row: dict = {"pieces": len(nll_model), "tokens": n}
    for who, nll in (("model", nll_model), ("ngram", nll_ngram)):
        nats = sum(x.sum() for x in nll) / n if n else float("nan")
        row.update({f"{who}_nats": nats, f"{who}_bits": nats / math.log(2),
                    f"{who}_ppl": math.exp(nats)})
    row["improvement"] = 1 - row["model_ppl"] / row["ngram_ppl"]
    return row


def _figures(records: list[dict], source: str) -> dict:
    """Pooled figures of one source (model, ngram, reference) over some prompts."""
    rs = [r[source] for r in records]
    notes, grams = sum(r["notes"] for r in rs), sum(r["memo_total"] for r in rs)
    ratios = [r["density_ratio"] for r in rs if r["density_ratio"] is not None]
    return {
        "prompts": len(rs),
        "notes": notes,
        "in_key": sum(r["in_key"] for r in rs) / notes if notes else None,
        "density_ratio": float(np.median(ratios)) if ratios else None,
        "memorization": sum(r["memo_found"] for r in rs) / grams if grams else None,
    }


def generation_report(model, ngram, pieces, styles, labels, memo, *, prompts=25, seed=0,
                      gen_tokens=256, prompt_bars=8, prompt_tokens=None, temperature=1.0,
                      top_p=0.95, device="cpu") -> tuple[dict, list[dict]]:
    """Continue held-out prompts with the model and the n-gram; figures beside the truth."""
    chosen = choose_prompts(pieces, styles, prompts, gen_tokens, seed, bars=prompt_bars,
                            n_tokens=prompt_tokens)
    prs = [p for _, p in chosen]
    conts = {
        "model": generate_model(model, prs, gen_tokens, temperature, top_p, seed, device),
        "ngram": generate_ngram(ngram, prs, gen_tokens, temperature, top_p, seed),
        "reference": [pieces[i][len(p) : len(p) + gen_tokens] for i, p in chosen],
    }
    records = []
    for k, (i, pr) in enumerate(chosen):
        key = estimate_key(pr)
        rec = {"index": i, "style": labels[i], "prompt_tokens": len(pr),
               "key": f"{NAMES[key[0]]} {key[1]}"}
        for source, outs in conts.items():
            pitches = note_on_pitches(outs[k])
            found, total = memo.count(pitches)
            rec[source] = {"notes": len(pitches), "in_key": in_key(pitches, key),
                           "density_ratio": density_ratio(pr, outs[k]),
                           "memo_found": found, "memo_total": total,
                           "tokens": outs[k].tolist()}
        records.append(rec)
    styles = {s: {src: _figures([r for r in records if r["style"] == s], src) for src in conts}
              for s in dict.fromkeys(r["style"] for r in records)}
    return {"overall": {src: _figures(records, src) for src in conts}, "styles": styles}, records


def evaluate(model_dir, corpus_dir=None, order=5, max_pieces=None, batch_size=16, device="cpu",
             log=print, **gen_args) -> dict:
    """Every number of ``improv eval`` as a JSON-ready dict (``gen_args``: generation_report's)."""
    model_dir = Path(model_dir)
    corpus_dir = Path(corpus_dir) if corpus_dir else default_corpus_dir()
    train, val = load_split(corpus_dir, "train"), load_split(corpus_dir, "val")
    model = load_model(model_dir, device=device)
    names = style_names(load_styles(model_dir), corpus_dir)
    keep = [i for i in range(len(val.names)) if val.starts[i + 1] - val.starts[i] > 1]
    if max_pieces and len(keep) > max_pieces:
        rng = np.random.default_rng(gen_args.get("seed", 0))
        keep = sorted(rng.choice(keep, max_pieces, replace=False).tolist())
    if not keep:
        raise EvalError(f"the val split in {corpus_dir} has no pieces to score; rebuild it")
    all_pieces = split_pieces(val)
    pieces = [all_pieces[i] for i in keep]
    styles = [int(val.styles[i]) for i in keep]
    labels = [names.get(k, f"style{k}") for k in styles]

    ngram, ng_info = fit_or_load_ngram(corpus_dir, train, order)
    log(f"n-gram (order {order}): " + (f"loaded {ng_info['cache']}" if ng_info["cached"]
        else f"fit on {ng_info['train_tokens']} tokens in {ng_info['fit_seconds']} s"))
    t0 = time.perf_counter()
    ng_nll = [-lp for lp in ngram.corpus_logprobs(pieces)]
    m_nll = model_nll(model, pieces, batch_size=batch_size, device=device)
    log(f"scored {sum(map(len, ng_nll))} val tokens in {time.perf_counter() - t0:.1f} s")
    ce_styles = {}
    for s in sorted(set(styles)):
        idx = [k for k, x in enumerate(styles) if x == s]
        ce_styles[labels[idx[0]]] = _ce_row([m_nll[k] for k in idx], [ng_nll[k] for k in idx])

    t0 = time.perf_counter()
    memo = MemorizationIndex(split_pieces(train))
    gen, records = generation_report(model, ngram, pieces, styles, labels, memo, device=device,
                                     **gen_args)
    for r in records:
        r["piece"] = val.names[keep[r.pop("index")]]
    log(f"generated {len(records)} continuations in {time.perf_counter() - t0:.1f} s")
    settings = {"prompts": len(records), "memorization_ngram": MEMO_N, **gen_args}
    return {
        "model": str(model_dir),
        "corpus": str(corpus_dir),
        "context": model_context(model),
        "ngram": ng_info,
        "perplexity": {"overall": _ce_row(m_nll, ng_nll), "styles": ce_styles},
        "generation": {"settings": settings, **gen, "prompts": records},
    }


# --- the gate and the table --------------------------------------------------------------


def gate_status(row: dict, min_improvement: float = 0.25, min_tokens: int = MIN_GATE_TOKENS) -> str:
    if row["tokens"] < min_tokens:
        return "too little data"
    return "pass" if row["improvement"] >= min_improvement else "FAIL"


def perplexity_gate(results: dict, min_improvement: float = 0.25,
                    min_tokens: int = MIN_GATE_TOKENS) -> list[str]:
    """Styles whose model perplexity is not at least ``min_improvement`` below the n-gram's.

    Styles with fewer than ``min_tokens`` val tokens are not gated (their status in
    :func:`gate_status` and in the table says "too little data").
    """
    rows = results["perplexity"]["styles"]
    return [s for s, r in rows.items() if gate_status(r, min_improvement, min_tokens) == "FAIL"]


def _triple(figs: dict | None, field: str) -> str:
    if not figs:
        return "-"
    vals = [figs[src][field] for src in ("model", "ngram", "reference")]
    return "/".join("-" if v is None else f"{v:.2f}" for v in vals)


def format_table(results: dict, min_improvement: float = 0.25,
                 min_tokens: int = MIN_GATE_TOKENS) -> str:
    ppl, gen = results["perplexity"], results["generation"]
    head = (f"{'style':<12} {'tokens':>8} {'model ppl':>9} {'n-gram ppl':>10} {'improv':>7}  "
            f"{'in-key':>14}  {'density':>14}  {'memorized':>14}  gate")
    lines = [head, "(in-key, density ratio (median), memorized: model/n-gram/true continuation)"]
    rows = [*ppl["styles"].items(), ("overall", ppl["overall"])]
    for name, r in rows:
        figs = gen["overall"] if name == "overall" else gen["styles"].get(name)
        gate = "" if name == "overall" else gate_status(r, min_improvement, min_tokens)
        lines.append(
            f"{name:<12} {r['tokens']:>8} {r['model_ppl']:>9.3f} {r['ngram_ppl']:>10.3f} "
            f"{100 * r['improvement']:>6.1f}%  {_triple(figs, 'in_key'):>14}  "
            f"{_triple(figs, 'density_ratio'):>14}  {_triple(figs, 'memorization'):>14}  {gate}")
    o = ppl["overall"]
    lines.append(f"cross-entropy per token: model {o['model_nats']:.4f} nats "
                 f"({o['model_bits']:.4f} bits), n-gram {o['ngram_nats']:.4f} nats "
                 f"({o['ngram_bits']:.4f} bits)")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="A model against the n-gram baseline.",
        **with_examples(
            "improv eval --model models/mine",
            "improv eval --conversation --model models/mine --bar"))
    ap.add_argument("--model", required=True, type=Path, help="model directory (models/NAME)")
    ap.add_argument("--corpus", type=Path, default=None, help="corpus folder")
    ap.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    ap.add_argument("--max-pieces", type=int, default=None, help="score N random val pieces")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--prompts", type=int, default=25, help="held-out prompts to continue")
    ap.add_argument("--seed", type=int, default=0, help="seeds the sampled continuations")
    ap.add_argument("--gen-tokens", type=int, default=256, help="continuation length in tokens")
    ap.add_argument("--prompt-bars", type=int, default=8, help="prompt = the first N bars")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="prompt = the first N tokens")
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature of the continuations")
    ap.add_argument("--top-p", type=float, default=0.95,
                    help="nucleus sampling mass of the continuations")
    ap.add_argument("--batch-size", type=int, default=16, help="pieces per forward pass")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device (default: cuda when available)")
    ap.add_argument("--min-improvement", type=float, default=0.25, help="perplexity gate")
    ap.add_argument("--min-tokens", type=int, default=MIN_GATE_TOKENS,
                    help="styles with fewer val tokens are not gated")
    ap.add_argument("--gate", action="store_true", help="exit 1 when a style fails the gate")
    add_conversation_arguments(ap)
    args = ap.parse_args(argv)
    prog = prog or "improv eval"
    if args.conversation:
        return run_conversation(args, prog)
    try:
        if args.order < 1 or args.prompts < 0 or args.gen_tokens < 1 or not 0 < args.top_p <= 1:
            raise EvalError("use --order >= 1, --prompts >= 0, --gen-tokens >= 1, 0 < --top-p <= 1")
        res = evaluate(args.model, args.corpus, args.order, args.max_pieces, args.batch_size,
                       args.device, prompts=args.prompts, seed=args.seed,
                       gen_tokens=args.gen_tokens, prompt_bars=args.prompt_bars,
                       prompt_tokens=args.prompt_tokens, temperature=args.temperature,
                       top_p=args.top_p)
    except (EvalError, DataError, ModelError, BaselineError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    failed = perplexity_gate(res, args.min_improvement, args.min_tokens)
    few = [s for s, r in res["perplexity"]["styles"].items() if r["tokens"] < args.min_tokens]
    res["gate"] = {"min_improvement": args.min_improvement, "min_tokens": args.min_tokens,
                   "failed": failed, "too_little_data": few}
    print(format_table(res, args.min_improvement, args.min_tokens))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.json}")
    if failed:
        print(f"perplexity gate: {', '.join(failed)} not {100 * args.min_improvement:.0f}% "
              "below the n-gram", file=sys.stderr)
    return 1 if failed and args.gate else 0


if __name__ == "__main__":
    sys.exit(main())
