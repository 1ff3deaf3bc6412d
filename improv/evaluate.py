"""``improv eval``: a trained model against the n-gram baseline on the held-out split.

This module owns the quality numbers of a model:

* cross-entropy (nats, bits) and perplexity per style, for the model and for the
  Kneser-Ney baseline (:mod:`improv.baseline`), scored on exactly the same tokens: every
  token of every val piece after its STYLE token;
* musical figures of continuations of held-out prompts, for the model, the baseline and the
  true continuation (the reference row): share of notes in the prompt's key, note density
  relative to the prompt, and how much of it is copied from the training split;
* the perplexity gate: the model must be at least 25% below the baseline in every style
  with enough held-out data.

The model sees what it saw in training: a STYLE token at position 0, then a crop of the
piece. Pieces longer than the context are scored with overlapping windows (see
:func:`window_plan`); generation recomputes the last C tokens each step.
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

from improv import tokens as tk
from improv.baseline import BaselineError, NGramModel
from improv.dataset import DataError, Split, default_corpus_dir, load_split
from improv.keys import KK_MAJOR, KK_MINOR, MODES
from improv.model import ModelError, load_model, load_styles

MIN_GATE_TOKENS = 5000
MEMO_N = 8
MAJOR_PROFILE, MINOR_PROFILE = np.array(KK_MAJOR), np.array(KK_MINOR)
MAJOR_SCALE, MINOR_SCALE = MODES["major"], MODES["minor"]  # natural minor
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Never part of a continuation: the sampler in the live path forbids them too.
BANNED = [tk.PAD] + [tk.style_token(k) for k in range(tk.N_STYLES)]


class EvalError(ValueError):
    """Evaluation cannot run as asked; the message says what to do."""


# --- musical figures ---------------------------------------------------------------------


def note_on_pitches(toks) -> np.ndarray:
    """MIDI pitches of the NOTE_ON tokens, in order."""
    return np.array([e.pitch for e in tk.decode_tokens(toks) if e.velocity > 0], dtype=np.int64)


def estimate_key(toks) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor"): Krumhansl-Schmuckler on the duration-weighted
    pitch-class histogram (note counts when nothing has a duration)."""
    hist = np.zeros(12)
    for n in tk.decode_notes(toks):
        hist[n.pitch % 12] += n.end - n.start
    if not hist.any():
        hist += np.bincount(note_on_pitches(toks) % 12, minlength=12)
    if not hist.any():
        return 0, "major"
    best, key = -2.0, (0, "major")
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = np.corrcoef(hist, np.roll(profile, tonic))[0, 1]
            if np.isfinite(r) and r > best + 1e-12:
                best, key = r, (tonic, mode)
    return key


def in_key(pitches: np.ndarray, key: tuple[int, str]) -> int:
    """How many of ``pitches`` belong to the key's diatonic scale."""
    scale = MAJOR_SCALE if key[1] == "major" else MINOR_SCALE
    return int(np.isin((np.asarray(pitches) - key[0]) % 12, scale).sum())


def notes_per_quarter(toks) -> float:
    """Note-ons per quarter; a stretch with (almost) no time counts as one quarter long."""
    ticks = sum(tk.shift_ticks(t) for t in map(int, toks) if tk.is_time_shift(t))
    return len(note_on_pitches(toks)) / max(ticks / tk.TICKS_PER_QUARTER, 1.0)


def density_ratio(prompt, continuation) -> float | None:
    base = notes_per_quarter(prompt)
    return notes_per_quarter(continuation) / base if base > 0 else None


def pitch_ngrams(pitches: np.ndarray, n: int = MEMO_N) -> np.ndarray:
    """Each run of n consecutive pitches packed exactly into one int64 (7 bits a pitch)."""
    p = np.asarray(pitches, dtype=np.int64) - tk.LOWEST_PITCH
    if len(p) < n:
        return np.zeros(0, np.int64)
    key = np.zeros(len(p) - n + 1, np.int64)
    for j in range(n):
        key = (key << 7) | p[j : len(p) - n + 1 + j]
    return key


class MemorizationIndex:
    """Every 8-note NOTE_ON pitch sequence of the training pieces (as stored, untransposed)."""

    def __init__(self, pieces, n: int = MEMO_N):
        self.n = n
        grams = []
        for toks in pieces:
            t = np.asarray(toks, dtype=np.int64)
            on = t[(t >= tk.NOTE_ON_BASE) & (t < tk.NOTE_OFF_BASE)] - tk.NOTE_ON_BASE
            grams.append(pitch_ngrams(on + tk.LOWEST_PITCH, n))
        self.keys = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.int64)

    def count(self, pitches) -> tuple[int, int]:
        """(n-grams found in training, n-grams in ``pitches``)."""
        g = pitch_ngrams(pitches, self.n)
        return int(np.isin(g, self.keys, assume_unique=False).sum()), len(g)


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


def model_context(model) -> int:
    return int((getattr(model, "cfg", None) or model.config).context)


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


# --- generation --------------------------------------------------------------------------


def sample_top_p(probs: np.ndarray, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row of ``probs`` [B, V] from the smallest set holding ``top_p`` of the mass."""
    order = np.argsort(-probs, axis=1, kind="stable")
    sp = np.take_along_axis(probs, order, axis=1)
    cum = np.cumsum(sp, axis=1)
    sp = np.where(cum - sp < top_p * cum[:, -1:], sp, 0.0)  # always keeps the most likely
    cum = np.cumsum(sp, axis=1)
    u = rng.random((len(probs), 1)) * cum[:, -1:]
    pick = np.minimum((cum <= u).sum(axis=1), probs.shape[1] - 1)
    return order[np.arange(len(probs)), pick]


def _tempered(logp: np.ndarray, temperature: float) -> np.ndarray:
    logp = logp.astype(np.float64)
    logp[:, BANNED] = -np.inf
    z = logp / max(temperature, 1e-6)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


@torch.no_grad()
def generate_model(model, prompts, n_tokens, temperature=1.0, top_p=0.95, seed=0, device="cpu",
                   batch_size=32) -> list[np.ndarray]:
    """Continue each prompt by recomputing [STYLE] + the last C-1 tokens at every step."""
    C, rng, outs = model_context(model), np.random.default_rng(seed), []
    for b0 in range(0, len(prompts), batch_size):
        batch = [list(map(int, p)) for p in prompts[b0 : b0 + batch_size]]
        gen: list[list[int]] = [[] for _ in batch]
        for _ in range(n_tokens):
            rows = [[p[0]] + (p[1:] + g)[-(C - 1):] for p, g in zip(batch, gen, strict=True)]
            x = torch.full((len(rows), max(map(len, rows))), tk.PAD, dtype=torch.long)
            for r, row in enumerate(rows):
                x[r, : len(row)] = torch.tensor(row)
            lens = torch.tensor([len(r) - 1 for r in rows])
            logits = _logits(model, x.to(device))[torch.arange(len(rows)), lens.to(device)]
            logp = torch.log_softmax(logits.float()[:, : tk.VOCAB_SIZE], dim=-1).cpu().numpy()
            picks = sample_top_p(_tempered(logp, temperature), top_p, rng)
            for g, t in zip(gen, picks, strict=True):
                g.append(int(t))
        outs += [np.array(g, dtype=np.int64) for g in gen]
    return outs


def generate_ngram(ngram: NGramModel, prompts, n_tokens, temperature=1.0, top_p=0.95,
                   seed=0) -> list[np.ndarray]:
    rng, outs = np.random.default_rng(seed), []
    for p in prompts:
        seq = list(map(int, p))
        for _ in range(n_tokens):
            probs = _tempered(np.log(ngram.next_distribution(seq))[None], temperature)
            seq.append(int(sample_top_p(probs, top_p, rng)[0]))
        outs.append(np.array(seq[len(p):], dtype=np.int64))
    return outs


def make_prompt(piece: np.ndarray, bars: int = 8, max_tokens: int = 512,
                n_tokens: int | None = None) -> np.ndarray | None:
    """The first ``bars`` bars of a piece (fewer whole bars where they pass ``max_tokens``),
    or its first ``n_tokens``; None if the piece is not longer than that."""
    if n_tokens:
        return piece[:n_tokens] if len(piece) > n_tokens else None
    lines = np.flatnonzero(piece == tk.BAR)  # lines[b] starts bar b + 1
    fits = np.flatnonzero(lines[1 : bars + 1] <= max_tokens)
    if len(lines) <= bars or not len(fits):
        return None
    return piece[: lines[fits[-1] + 1]]


def choose_prompts(pieces, styles, n, gen_tokens, seed, **prompt_args) -> list[tuple]:
    """Up to n (piece index, prompt) pairs, round-robin over styles (random within a style),
    each from a piece with ``gen_tokens`` true continuation tokens after the prompt."""
    rng = np.random.default_rng(seed)
    by_style: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i in rng.permutation(len(pieces)):
        pr = make_prompt(pieces[i], **prompt_args)
        if pr is not None and len(pieces[i]) >= len(pr) + gen_tokens:
            by_style.setdefault(int(styles[i]), []).append((int(i), pr))
    chosen: list[tuple[int, np.ndarray]] = []
    queues = [by_style[s] for s in sorted(by_style)]
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen


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


def style_names(model_dir: Path, corpus_dir: Path) -> dict[int, str]:
    """Style index -> name: corpus styles, then the corpus's user slots, then the model's."""
    names = dict(enumerate(tk.CORPUS_STYLES))
    try:
        summary = json.loads((corpus_dir / "summary.json").read_text())
        names.update({int(k): n for n, k in summary.get("styles", {}).items()})
    except (OSError, ValueError, AttributeError):
        pass
    names.update({k: n for n, k in load_styles(model_dir).items()})
    return names


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
    names = style_names(model_dir, corpus_dir)
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
    ap = argparse.ArgumentParser(prog=prog, description="A model against the n-gram baseline.")
    ap.add_argument("--model", required=True, type=Path, help="model directory (models/NAME)")
    ap.add_argument("--corpus", type=Path, default=None, help="corpus folder")
    ap.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    ap.add_argument("--max-pieces", type=int, default=None, help="score N random val pieces")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--prompts", type=int, default=25, help="held-out prompts to continue")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-tokens", type=int, default=256, help="continuation length in tokens")
    ap.add_argument("--prompt-bars", type=int, default=8, help="prompt = the first N bars")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="prompt = the first N tokens")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-improvement", type=float, default=0.25, help="perplexity gate")
    ap.add_argument("--min-tokens", type=int, default=MIN_GATE_TOKENS,
                    help="styles with fewer val tokens are not gated")
    ap.add_argument("--gate", action="store_true", help="exit 1 when a style fails the gate")
    args = ap.parse_args(argv)
    prog = prog or "improv eval"
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
