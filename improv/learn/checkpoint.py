"""Training checkpoints: what ``improv train --resume`` goes on from.

This module owns a checkpoint folder: ``model.safetensors`` (weights, no pickle),
``optim.pt`` (the optimizer and RNG states, read with ``weights_only=True``) and
``state.json`` (step, best loss, config, styles, arguments, numpy's RNG), each written
to a temporary name and moved into place, ``state.json`` last: a checkpoint counts
only once all three are there, and one interrupted while saving is refused with the
fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from improv.learn.model import GPT


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says what to do."""


@dataclass
class RunState:
    step: int = 0
    best_val: float = float("inf")
    best_step: int = 0
    tokens_seen: int = 0


def save_checkpoint(
    ckpt: Path,
    model: GPT,
    opt,
    state: RunState,
    rng: np.random.Generator,
    args_dict: dict,
    styles: dict[str, int],
) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(ckpt / "model.safetensors.tmp"), metadata={"step": str(state.step)})
    extra = {"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "step": state.step}
    if torch.cuda.is_available():
        extra["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(extra, ckpt / "optim.pt.tmp")
    meta = {
        **state.__dict__,
        "config": model.cfg.to_dict(),
        "styles": styles,
        "args": args_dict,
        "numpy_rng": rng.bit_generator.state,
    }
    (ckpt / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    # state.json last: a checkpoint counts only once all three files are in place.
    for name in ("model.safetensors", "optim.pt", "state.json"):
        os.replace(ckpt / f"{name}.tmp", ckpt / name)


def load_checkpoint(ckpt: Path, device: str) -> tuple[dict, dict, dict]:
    """(state.json, weights, optim.pt contents) of a checkpoint folder."""
    try:
        meta = json.loads((ckpt / "state.json").read_text())
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            weights_step = int((f.metadata() or {}).get("step", -1))
        weights = load_file(str(ckpt / "model.safetensors"), device=device)
        extra = torch.load(ckpt / "optim.pt", map_location=device, weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint in {ckpt} cannot be read ({e}); delete it") from e
    if not meta["step"] == weights_step == extra.get("step"):
        raise CheckpointError(
            f"the checkpoint in {ckpt} is inconsistent (interrupted while saving); delete it "
            "and start again, or keep the best model already in --out"
        )
    return meta, weights, extra


