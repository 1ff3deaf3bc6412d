"""Training and fine-tuning: ``improv train``.

This module owns the training loop: AdamW (decay on matrices only), linear
warm-up then cosine decay, gradient clipping, bf16 autocast (on CUDA and on CPUs
with native bf16), a fixed set of validation batches, resumable checkpoints,
and the hand-off of the best model (by validation loss) to a model directory
with its ONNX export.

Checkpoints (``--ckpt``, default ``runs/NAME`` in the user cache folder, improv.core.paths)::

    model.safetensors   weights
    optim.pt            optimizer state and torch RNG state (tensors and plain
                        containers only: loads with torch.load(weights_only=True))
    state.json          step, best validation loss, config, arguments, numpy RNG

A run that stops (Ctrl-C, ``--time-limit``, ``--stop-at``) continues exactly
where it left off with ``--resume``. Fine-tuning (``--from models/NAME --style
NAME --data FOLDER``) gives a new style the next free user slot (5..15) and
builds a small token split from the folder's .mid files inside the checkpoint
folder. One process, one device: no DDP (one GPU trains this size in minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from improv.core import paths
from improv.core import tokens as tk
from improv.core.cli_help import with_examples
from improv.learn import data, dataset
from improv.learn.checkpoint import CheckpointError, RunState, load_checkpoint, save_checkpoint
from improv.learn.model import GPT, ModelConfig, ModelError, default_styles, load_model, save_model


class TrainError(ValueError):
    """Bad arguments or inputs to the trainer; the message says what to do."""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = ModelConfig()
    ap = argparse.ArgumentParser(
        prog=prog, description="Train or fine-tune a model.",
        **with_examples(
            "improv train --out models/mine           # on the corpus improv data built",
            "improv train --out models/mine --resume  # on from the last checkpoint",
            "improv train --from models/improv-base --data ~/my-sets --style mine \\",
            "    --out models/mine"))
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="corpus folder (improv data) or, to fine-tune, a folder of .mid files "
        f"(default: the corpus in {paths.corpus_dir()})",
    )
    ap.add_argument("--out", type=Path, required=True, help="model directory to write, models/NAME")
    ap.add_argument(
        "--from",
        dest="from_",
        metavar="MODEL_DIR",
        type=Path,
        default=None,
        help="start from this model directory (fine-tuning)",
    )
    ap.add_argument(
        "--style",
        default=None,
        help="style name for the .mid files in --data (a new name takes a user slot)",
    )
    ap.add_argument(
        "--steps", type=int, default=None,
        help="optimizer steps (20000; with --from: 8 passes over your data, 40..1000)"
    )
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument(
        "--seq-len",
        type=int,
        default=0,
        help="training sequence length, STYLE token included (0: the model's context, or the "
        "longest piece when that is shorter); "
        "shorter is cheaper per token on CPU",
    )
    ap.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (1e-3; 3e-4 with --from)"
    )
    ap.add_argument("--min-lr-frac", type=float, default=0.1, help="final lr as a fraction of --lr")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps (500, 50 with --from; at most a tenth of --steps)",
    )
    ap.add_argument("--weight-decay", type=float, default=0.1,
                    help="AdamW weight decay (default 0.1)")
    ap.add_argument("--eval-every", type=int, default=250, help="validate (and checkpoint) every N")
    ap.add_argument("--eval-batches", type=int, default=16, help="fixed validation batches")
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds the weights, batches and dropout (default 0)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where torch trains (auto: CUDA when it works, else CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    ap.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast (auto: on CUDA, and on CPUs with native bf16 such as AVX512-BF16)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        help=f"checkpoint folder (default: {paths.cache_dir() / 'runs'}/NAME)",
    )
    ap.add_argument("--resume", action="store_true", help="continue the run in --ckpt")
    ap.add_argument(
        "--time-limit",
        type=float,
        default=0,
        help="stop cleanly after this many seconds (resume later with --resume)",
    )
    ap.add_argument(
        "--stop-at", type=int, default=0, help="stop cleanly after this step, as if interrupted"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = ap.add_argument_group("model size (new models only)")
    g.add_argument("--n-layer", type=int, default=d.n_layer, help="transformer blocks")
    g.add_argument("--n-head", type=int, default=d.n_head, help="attention heads per block")
    g.add_argument("--d-model", type=int, default=d.d_model, help="embedding width")
    g.add_argument("--d-ff", type=int, default=0, help="MLP width (0: 4 x d-model)")
    g.add_argument("--context", type=int, default=d.context,
                   help="tokens the model sees (its KV cache at play time)")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout while training")
    return ap


# --- data --------------------------------------------------------------------------------


def _corpus_styles(corpus_dir: Path) -> dict[str, int]:
    try:
        styles = json.loads((corpus_dir / "summary.json").read_text()).get("styles")
        return {str(k): int(v) for k, v in styles.items()} if styles else default_styles()
    except (OSError, ValueError):
        return default_styles()


def style_slot(styles: dict[str, int], name: str) -> dict[str, int]:
    """``styles`` with ``name`` added at the next free user slot (kept if already there)."""
    if name in styles:
        return dict(styles)
    used = set(styles.values())
    free = [i for i in range(len(tk.CORPUS_STYLES), tk.N_STYLES) if i not in used]
    if not free:
        raise TrainError(
            f"no free style slot for {name!r}: all {tk.N_STYLES} are taken "
            f"({', '.join(styles)}); fine-tune under an existing style name"
        )
    return {**styles, name: free[0]}


def prepare_data(
    args, styles: dict[str, int], ckpt: Path
) -> tuple[dataset.Split, dataset.Split, dict]:
    """Train and val splits, and the style table for the model directory."""
    src = (args.data or dataset.default_corpus_dir()).expanduser()
    if (src / "train_tokens.npy").exists():
        if args.style:
            raise TrainError(
                f"--style goes with a folder of .mid files, and {src} is a built "
                "corpus; drop --style or point --data at your .mid folder"
            )
        styles = {**_corpus_styles(src), **styles}
        train, val = dataset.load_split(src, "train"), dataset.load_split(src, "val")
    elif src.is_dir():
        if not args.style:
            raise TrainError(
                f"{src} is a folder, not a built corpus: name its style with "
                "--style NAME (or build a corpus first with improv data)"
            )
        if args.style in tk.CORPUS_STYLES:
            raise TrainError(f"--style {args.style!r} is a corpus style; pick a new name")
        styles = style_slot(styles, args.style)
        built = ckpt / "data"
        sources = data.midi_sources(src, args.style, styles[args.style])
        data.build(built, sources, jobs=1, styles=styles, progress=not args.no_progress)
        train, val = dataset.load_split(built, "train"), dataset.load_split(built, "val")
        if len(val) == 0:  # too few files to hold any out: watch the training loss instead
            print("note: too few files for a validation split; validating on the training files")
            val = train
    else:
        raise TrainError(
            f"--data {src} does not exist; build a corpus with improv data "
            "or pass a folder of .mid files"
        )
    if len(train) == 0:
        raise TrainError(f"{src} holds no training pieces; rebuild it with improv data")
    if len(val) == 0:
        raise TrainError(f"{src} has an empty validation split; rebuild it with improv data")
    return train, val, styles


# --- schedule and optimizer --------------------------------------------------------------


def lr_at(step: int, peak: float, warmup: int, total: int, min_frac: float) -> float:
    """Linear warm-up to ``peak`` then cosine decay to ``peak * min_frac`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: GPT, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device == "cuda")


# --- the loop ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: GPT, batches: list[torch.Tensor], device: str, amp: bool) -> float:
    """Mean loss per non-PAD target token over the fixed validation batches."""
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        x, y = b[:, :-1].to(device), b[:, 1:].to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            _, loss = model(x, y)
        n = int((y != tk.PAD).sum())
        if n == 0:
            continue
        total += float(loss) * n
        count += n
    model.train()
    return total / max(1, count)


def _card(model: GPT, state: RunState, args, styles: dict[str, int], tok_s: float) -> str:
    c = model.cfg
    lines = [
        f"# {args.out.name}",
        "",
        f"A {model.num_params() / 1e6:.2f}M-parameter decoder-only transformer for improv "
        f"({c.n_layer} layers, {c.n_head} heads, d_model {c.d_model}, d_ff {c.d_ff}, "
        f"context {c.context} tokens, rotary positions).",
        "",
        f"- data: {args.data or dataset.default_corpus_dir()}"
        + (f" (fine-tuned from {args.from_}, style {args.style!r})" if args.from_ else ""),
        f"- styles: {', '.join(f'{k}={v}' for k, v in sorted(styles.items(), key=lambda x: x[1]))}",
        f"- steps: {state.step} of batch {args.batch} x {args.seq_len or c.context} tokens "
        f"({state.tokens_seen / 1e6:.1f}M tokens), lr {args.lr}, seed {args.seed}",
        f"- best validation loss: {state.best_val:.4f} nats/token at step {state.best_step}",
        f"- training speed: {tok_s:,.0f} tokens/s on {args.device}",
        f"- written: {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "Files: model.safetensors (weights), config.json, vocab.json, model.onnx (decode graph "
        "with KV cache), cache_update.onnx. Its contract is in improv/export.py.",
        "",
    ]
    return "\n".join(lines)


def train(args) -> RunState:
    """Run (or resume) training as ``args`` says; returns the final run state."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda but torch sees no GPU; use --device cpu")
    args.device = device
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    amp = args.bf16 == "on" or (args.bf16 == "auto" and _native_bf16(device))
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    ckpt = (args.ckpt or paths.cache_dir() / "runs" / args.out.name).expanduser()
    resuming = args.resume and (ckpt / "state.json").exists()
    if (ckpt / "state.json").exists() and not args.resume:
        raise TrainError(
            f"{ckpt} holds a checkpoint: continue it with --resume, or pass "
            "--ckpt to start a new run elsewhere (or delete that folder)"
        )
    if args.resume and not resuming:
        print(f"note: no checkpoint in {ckpt}; starting a new run")

    if args.from_:
        base = load_model(args.from_)
        cfg, styles = base.cfg, _model_styles(args.from_)
    else:
        base = None
        cfg = ModelConfig(
            n_layer=args.n_layer,
            n_head=args.n_head,
            d_model=args.d_model,
            d_ff=args.d_ff or 4 * args.d_model,
            context=args.context,
            dropout=args.dropout,
        )
        styles = default_styles()
    finetune = args.from_ is not None
    args.lr = args.lr or (3e-4 if finetune else 1e-3)
    if resuming:
        meta, weights, extra = load_checkpoint(ckpt, device)
        cfg, styles = ModelConfig.from_dict(meta["config"]), meta["styles"]
    train_split, val_split, styles = prepare_data(args, styles, ckpt)

    torch.manual_seed(args.seed)
    model = GPT(cfg)
    if base is not None:
        model.load_state_dict(base.state_dict())
    state = RunState()
    rng = np.random.default_rng(args.seed)
    model.to(device)
    opt = make_optimizer(model, args.lr, args.weight_decay, device)
    if resuming:
        model.load_state_dict(weights)
        opt.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"].cpu())
        if "cuda_rng" in extra and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in extra["cuda_rng"]])
        rng.bit_generator.state = meta["numpy_rng"]
        state = RunState(meta["step"], meta["best_val"], meta["best_step"], meta["tokens_seen"])
        print(f"resuming {ckpt} at step {state.step} (best val {state.best_val:.4f})")
    # No longer than the longest piece: a short fine-tuning set padded to the whole context
    # would spend most of each step on padding.
    seq_len = args.seq_len or min(cfg.context, max(2, int(np.diff(train_split.starts).max())))
    if not 2 <= seq_len <= cfg.context:
        raise TrainError(f"--seq-len {seq_len} must be within 2..{cfg.context} (the context)")
    args.steps = args.steps or default_steps(finetune, len(train_split.tokens),
                                             args.batch * seq_len)
    if args.warmup is None:  # a short run still gets a short warm-up, then mostly decay
        args.warmup = min(50 if finetune else 500, max(1, args.steps // 10))
    n_params = model.num_params()
    print(
        f"model: {n_params / 1e6:.2f}M parameters {cfg.to_dict()}; device {device}; "
        f"{len(train_split)} train / {len(val_split)} val pieces"
    )

    val_rng = np.random.default_rng(args.seed + 1)  # the same batches at every evaluation
    val_batches = [
        torch.from_numpy(
            dataset.sample_batch(val_split, args.batch, seq_len, val_rng, transpose=False)
        )
        for _ in range(args.eval_batches)
    ]
    step_fn = torch.compile(model) if args.compile else model
    args_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def checkpoint():
        save_checkpoint(ckpt, model, opt, state, rng, args_dict, styles)

    def validate():
        val = evaluate(model, val_batches, device, amp)
        if val < state.best_val:
            state.best_val, state.best_step = val, state.step
            save_model(model, args.out, styles, card=_card(model, state, args, styles, tok_s))
        return val

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=state.step, unit="step", dynamic_ncols=True)
    t_start, tok_s, val = time.time(), 0.0, float("nan")
    stopped = False
    model.train()
    try:
        while state.step < args.steps:
            lr = lr_at(state.step, args.lr, args.warmup, args.steps, args.min_lr_frac)
            for group in opt.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batch = torch.from_numpy(dataset.sample_batch(train_split, args.batch, seq_len, rng))
            x, y = batch[:, :-1].to(device), batch[:, 1:].to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                _, loss = step_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            loss = loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state.step += 1
            state.tokens_seen += x.numel()
            dt = time.perf_counter() - t0
            tok_s = x.numel() / dt if tok_s == 0 else 0.9 * tok_s + 0.1 * x.numel() / dt
            if state.step % args.eval_every == 0 or state.step == args.steps:
                val = validate()
                checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss.item():.3f}",
                    val=f"{val:.3f}",
                    lr=f"{lr:.1e}",
                    tok_s=f"{tok_s:,.0f}",
                    refresh=False,
                )
            out_of_time = args.time_limit and time.time() - t_start > args.time_limit
            if state.step < args.steps and (out_of_time or state.step == args.stop_at):
                stopped = True
                break
    except KeyboardInterrupt:
        stopped = True
        print("\ninterrupted", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    if stopped:
        if state.best_step == 0 and state.step > 0:  # never validated: keep what we have
            validate()
        checkpoint()
        print(
            f"stopped at step {state.step}; continue with the same command and --resume "
            f"(checkpoint in {ckpt})"
        )
    if (args.out / "model.safetensors").exists():
        from improv.learn.export import export_model

        export_model(args.out)
        print(
            f"best val loss {state.best_val:.4f} at step {state.best_step}; wrote {args.out} "
            f"(model.onnx, cache_update.onnx); {tok_s:,.0f} tokens/s"
        )
    return state


def _native_bf16(device: str) -> bool:
    if device == "cuda":
        return True
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, hence the care
    return bool(check and check())


def _model_styles(model_dir: Path) -> dict[str, int]:
    from improv.learn.model import load_styles

    return load_styles(model_dir)


def default_steps(finetune: bool, train_tokens: int, batch_tokens: int) -> int:
    """20,000 steps from scratch; a fine-tune makes 8 passes over the player's own data,
    40..1,000 steps (10 short files: 40 steps, a few minutes on a CPU: more passes over so
    little only learns it by heart)."""
    if not finetune:
        return 20000
    passes = 8 * max(1, -(-train_tokens // max(1, batch_tokens)))
    return min(1000, max(40, passes))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.steps is not None and args.steps < 1 or args.batch < 1 or args.eval_every < 1:
            raise TrainError("--steps, --batch and --eval-every must be >= 1")
        if args.style and not args.data:
            raise TrainError("--style names the .mid files of --data: pass --data FOLDER too")
        train(args)
    except (TrainError, CheckpointError, ModelError, dataset.DataError) as e:
        print(f"{prog or 'improv train'}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
