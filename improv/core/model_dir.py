"""A model directory: what ``improv train``/``improv export`` write and ``improv jam`` reads.

This module owns the directory's contract, on both sides of it: the format number,
the files that must be there, the vocabulary check, and the one error a model that
cannot be used raises (its message says what to do).
"""

from __future__ import annotations

import json
from pathlib import Path

from improv.core import tokens as tk

FORMAT = 1
_CONFIG_KEYS = ("vocab_size", "n_layer", "n_head", "d_model", "context")
# What a model that can run here may have: far beyond any model improv trains, far below what
# would exhaust memory before the ONNX file's own shapes are compared with these.
_LIMITS = {"n_layer": 1024, "n_head": 1024, "d_model": 65536, "context": 1 << 20,
           "d_ff": 1 << 20}


class ModelError(ValueError):
    """A model directory or configuration that cannot be used; the message says what to do."""


def read_model_dir(model_dir: str | Path) -> tuple[dict, dict[str, int]]:
    """``(config, styles)`` of a model directory, checked against this vocabulary."""
    d = Path(model_dir)
    fix = f"point --model at a folder made by 'improv train' + 'improv export' (got {d})"
    if not d.is_dir():
        raise ModelError(f"model directory {d} does not exist; {fix}")
    for name in ("config.json", "vocab.json", "model.onnx"):
        if not (d / name).is_file():
            raise ModelError(f"{d / name} is missing; {fix}")
    try:
        config = json.loads((d / "config.json").read_text())
        vocab = json.loads((d / "vocab.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{d} has a corrupt config.json or vocab.json ({e}); re-export it") from e
    if not isinstance(config, dict) or any(type(config.get(k)) is not int for k in _CONFIG_KEYS):
        raise ModelError(f"{d / 'config.json'} lacks {', '.join(_CONFIG_KEYS)}; re-export it")
    problem = config_problem(config)
    if problem is not None:
        raise ModelError(f"{d / 'config.json'}: {problem}; re-export the model (improv export)")
    if config.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{d} has model format {config.get('format')}, this improv reads {FORMAT}")
    names = vocab.get("tokens") if isinstance(vocab, dict) else None
    if config["vocab_size"] != tk.VOCAB_SIZE or names != tk.vocabulary():
        raise ModelError(
            f"{d} was trained on another vocabulary ({config['vocab_size']} tokens, this improv "
            f"has {tk.VOCAB_SIZE}); retrain it or use a matching improv version"
        )
    styles = vocab.get("styles") or {n: i for i, n in enumerate(tk.CORPUS_STYLES)}
    return config, {str(k): int(v) for k, v in styles.items()}


def config_problem(config: dict) -> str | None:
    """Why a config's sizes cannot describe a model (zero heads, a width that does not split
    into heads...), or None."""
    for key, most in _LIMITS.items():
        value = config.get(key)
        if value is None and key not in _CONFIG_KEYS:
            continue  # optional (d_ff: the ONNX file has it)
        if type(value) is not int or not 1 <= value <= most:
            return f"{key} = {value!r} is impossible (use a whole number from 1 to {most})"
    d_model, n_head = config["d_model"], config["n_head"]
    if d_model % n_head or (d_model // n_head) % 2:
        return (f"d_model = {d_model} does not split into {n_head} heads of even size "
                "(d_model must be a multiple of 2 * n_head)")
    return None
