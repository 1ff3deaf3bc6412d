"""The token dataset on disk and the batches the trainer draws from it.

This module owns the corpus format that ``improv data`` writes and the torch
side reads (``Split``, ``write_split``, ``load_split``, ``default_corpus_dir``),
and sampling from it: crops of ``[STYLE] + piece`` (``sample_batch``) with
transposition as augmentation at sample time (``transpose_tokens``), never stored.

On disk (``corpus_dir``)::

    {train,val}_tokens.npy   uint16, all pieces concatenated
    {train,val}_index.npz    starts (int64, n+1 boundaries), styles (int16, n)
    {train,val}_names.json   piece ids, e.g. "bach/bwv66.6", "essenFolksong/han1#12"
    summary.json             written by the builder (improv.learn.data)

It needs only numpy and the vocabulary, so reading a corpus never pulls in music21.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from improv.core import paths
from improv.core import tokens as tk


class DataError(Exception):
    """A corpus that cannot be built or read as asked; the message says what to do."""


# --- dataset on disk ---------------------------------------------------------------------


@dataclass
class Split:
    tokens: np.ndarray  # uint16, all pieces concatenated; each piece starts with its STYLE token
    starts: np.ndarray  # int64 [n_pieces + 1] piece boundaries into tokens
    styles: np.ndarray  # int16 [n_pieces] style index
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def piece(self, i: int) -> np.ndarray:
        return self.tokens[self.starts[i] : self.starts[i + 1]]


def default_corpus_dir() -> Path:
    """``$IMPROV_CORPUS``, else ``corpus`` in the user's cache folder (improv.core.paths)."""
    return paths.corpus_dir()


def atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_split(corpus_dir, split: str, pieces: list[tuple[str, int, list[int]]]) -> None:
    """Write pieces ``(name, style index, tokens starting with the STYLE token)``."""
    d = Path(corpus_dir)
    d.mkdir(parents=True, exist_ok=True)
    lengths = [len(t) for _, _, t in pieces]
    starts = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    toks = np.empty(int(starts[-1]), dtype=np.uint16)
    for (name, style, t), a, b in zip(pieces, starts[:-1], starts[1:], strict=True):
        if not t or t[0] != tk.style_token(style):
            raise ValueError(f"piece {name!r} does not start with its STYLE token")
        toks[a:b] = t
    styles = np.array([s for _, s, _ in pieces], dtype=np.int16)
    atomic_write(d / f"{split}_tokens.npy", lambda f: np.save(f, toks))
    atomic_write(d / f"{split}_index.npz", lambda f: np.savez(f, starts=starts, styles=styles))
    names = json.dumps([n for n, _, _ in pieces]).encode()
    atomic_write(d / f"{split}_names.json", lambda f: f.write(names))


def load_split(corpus_dir: Path | str, split: str) -> Split:
    d = Path(corpus_dir)
    path = d / f"{split}_tokens.npy"
    if not path.exists():
        raise DataError(
            f"no {split} split in {d}; build the corpus first with: improv data --out {d}"
        )
    toks = np.load(path)
    with np.load(d / f"{split}_index.npz") as z:
        starts, styles = z["starts"].astype(np.int64), z["styles"].astype(np.int16)
    names = json.loads((d / f"{split}_names.json").read_text())
    return Split(toks, starts, styles, names)


# --- sampling ----------------------------------------------------------------------------


def transpose_tokens(tokens: np.ndarray, semitones: int) -> np.ndarray | None:
    """Tokens with every note moved by ``semitones``; None if a note leaves 21..108."""
    t = np.asarray(tokens)
    if semitones == 0:
        return t.copy()
    out = t.astype(np.int64)
    for base in (tk.NOTE_ON_BASE, tk.NOTE_OFF_BASE):
        mask = (out >= base) & (out < base + tk.N_PITCHES)
        moved = out[mask] + semitones
        if moved.size and (moved.min() < base or moved.max() >= base + tk.N_PITCHES):
            return None
        out[mask] = moved
    return out.astype(t.dtype)


def sample_batch(
    split: Split,
    batch_size: int,
    context: int,
    rng: np.random.Generator,
    transpose: bool = True,
    max_shift: int = 6,
) -> np.ndarray:
    """Rows ``[STYLE] + crop`` of ``context`` tokens, pieces weighted by length, PAD-filled."""
    lengths = np.diff(split.starts) - 1  # tokens after the STYLE token
    if len(lengths) == 0 or lengths.sum() <= 0:
        raise DataError("the split has no tokens; rebuild the corpus with: improv data")
    p = lengths / lengths.sum()
    out = np.full((batch_size, context + 1), tk.PAD, dtype=np.int64)
    for row, i in enumerate(rng.choice(len(lengths), size=batch_size, p=p)):
        a = int(split.starts[i])
        body = split.tokens[a + 1 : a + 1 + int(lengths[i])]
        start = int(rng.integers(0, max(0, len(body) - context) + 1))
        crop = body[start : start + context]
        if transpose and max_shift > 0:
            for _ in range(4):
                moved = transpose_tokens(crop, int(rng.integers(-max_shift, max_shift + 1)))
                if moved is not None:
                    crop = moved
                    break
        out[row, 0] = split.tokens[a]
        out[row, 1 : 1 + len(crop)] = crop
    return out


def augmentation_factor(split: Split, max_shift: int = 6) -> float:
    """Mean number of transpositions in [-max_shift, max_shift] each piece admits."""
    if not len(split):
        return 0.0
    counts = []
    for i in range(len(split)):
        body = split.piece(i)[1:].astype(np.int64)
        on = body[(body >= tk.NOTE_ON_BASE) & (body < tk.NOTE_OFF_BASE)] - tk.NOTE_ON_BASE
        if on.size == 0:
            counts.append(1)
            continue
        lo, hi = int(on.min()), int(on.max())
        down = min(max_shift, lo)
        up = min(max_shift, tk.N_PITCHES - 1 - hi)
        counts.append(down + up + 1)
    return float(np.mean(counts))


def style_names(model_styles: dict[str, int], corpus_dir: Path) -> dict[int, str]:
    """Style index -> name: corpus styles, then the corpus's user slots, then the model's."""
    names = dict(enumerate(tk.CORPUS_STYLES))
    try:
        summary = json.loads((corpus_dir / "summary.json").read_text())
        names.update({int(k): n for n, k in summary.get("styles", {}).items()})
    except (OSError, ValueError, AttributeError):
        pass
    names.update({k: n for n, k in model_styles.items()})
    return names
