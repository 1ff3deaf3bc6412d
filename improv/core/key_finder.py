"""Finding the key of what was played: Krumhansl-Schmuckler key finding.

This module owns the one key finder. The sampler's key lock on "auto" asks it about the
player's recent notes, and the evaluation (improv.learn.eval_musical) about a whole
continuation: the major or minor key whose Krumhansl-Kessler profile (improv.core.keys)
correlates best with the pitch-class histogram. It needs numpy; improv.core.keys stays
stdlib-only for the preset room.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from improv.core import keys
from improv.core.keys import KK_MAJOR, KK_MINOR, NOTE_NAMES


def _profile_matrix() -> np.ndarray:
    rows = [np.roll(prof, t) for prof in (KK_MAJOR, KK_MINOR) for t in range(12)]
    m = np.array(rows, dtype=np.float64)
    m -= m.mean(axis=1, keepdims=True)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


_PROFILES = _profile_matrix()  # [24, 12]: rows 0..11 major on C..B, 12..23 minor


class Key(NamedTuple):
    tonic: int  # pitch class 0..11
    mode: str
    confidence: float  # correlation with the best profile, -1..1

    @property
    def name(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    def pitch_classes(self) -> frozenset[int]:
        return keys.pitch_classes(self.tonic, self.mode)


def infer_key(pitches_or_histogram: Iterable[float] | np.ndarray) -> Key | None:
    """Krumhansl-Schmuckler key finding: the major or minor key that best fits the notes.

    Pass MIDI pitches (ints, any octave), or a float numpy array of shape (12,)
    as a pitch-class histogram (e.g. durations per class). None when there is
    nothing to go on (no notes, or all classes equally present).
    """
    x = pitches_or_histogram
    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.shape == (12,):
        hist = x.astype(np.float64)
    else:
        pcs = np.asarray(list(x), dtype=np.int64) % 12
        hist = np.bincount(pcs, minlength=12).astype(np.float64)
    hist = hist - hist.mean()
    norm = np.linalg.norm(hist)
    if norm == 0 or not np.isfinite(norm):
        return None
    r = _PROFILES @ (hist / norm)
    # A tie (two notes a tritone apart fit two keys equally) goes to the first key in
    # C..B major, C..B minor order, not to whichever rounding error is larger.
    best = int(np.flatnonzero(r >= r.max() - 1e-12)[0])
    return Key(best % 12, "major" if best < 12 else "minor", float(r[best]))
