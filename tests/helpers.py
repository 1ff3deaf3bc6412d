"""What the torch-side tests share: tiny model flags for ``improv train``, random pieces, a
tiny corpus on disk. (The one-thread fixture they use is in conftest.py.)"""

from __future__ import annotations

import random
from pathlib import Path

from improv import dataset
from improv import tokens as tk


def tiny_flags(context: int) -> list[str]:
    """``improv train`` flags for a 2-layer d32 model that trains in moments."""
    flags = "--d-model 32 --n-layer 2 --n-head 2 --d-ff 64 --batch 4 --threads 1 --no-progress"
    return [*flags.split(), "--context", str(context)]


def random_piece(rng: random.Random, style: int, n_notes: int) -> list[int]:
    """Tokens of ``n_notes`` random notes, overlapping at times, after the STYLE token."""
    t, events = 0, []
    for _ in range(n_notes):
        p, d = rng.randint(48, 84), rng.choice([6, 12, 24])
        events += [tk.Event(t, p, rng.randint(40, 110)), tk.Event(t + d, p, 0)]
        t += rng.choice([6, 12, 24])
    return tk.encode_events(events, style=style)


def write_corpus(out: Path, n_train: int, n_val: int, n_notes: int, seed: int = 0) -> Path:
    """Train pieces p0.. and val pieces v0.. of random notes, styles cycling over 0..4."""
    rng = random.Random(seed)
    train = [(f"p{i}", i % 5, random_piece(rng, i % 5, n_notes)) for i in range(n_train)]
    dataset.write_split(out, "train", train)
    val = [(f"v{i}", i % 5, random_piece(rng, i % 5, n_notes)) for i in range(n_val)]
    dataset.write_split(out, "val", val)
    return out
