"""The quality reference: an interpolated modified Kneser-Ney n-gram model on the same tokens.

A transformer that cannot clearly beat a 5-gram on held-out pieces has learnt nothing a
counting table could not, so ``improv eval`` scores both on exactly the same tokens.

Each piece is one sequence starting with its STYLE token; it is left-padded with PAD (which
never occurs in music) so that every predicted token has a full-length context and the STYLE
token is the first real context token, as for the transformer. The STYLE token itself is never
predicted. N-grams never cross piece boundaries.

Estimator (Chen & Goodman, interpolated, modified):

    p_n(w | h) = (max(c(h w) - D(c), 0) + gamma(h) p_{n-1}(w | h')) / c(h),
    gamma(h) = D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)

with raw counts at the highest order, continuation counts (distinct left extensions) below it,
except n-grams that start with PAD (a piece start has no left extension) which keep raw counts.
A history never seen falls back to the lower order unchanged; the lowest order interpolates with
the uniform distribution over the vocabulary, so every token has non-zero probability and each
distribution sums to one.

N-grams are packed into int64 keys (``bits`` per token, oldest token in the highest bits), so
fitting is a handful of ``np.unique`` calls and scoring is ``np.searchsorted``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from improv.core.tokens import PAD, VOCAB_SIZE

FORMAT = 1
DEFAULT_DISCOUNTS = (0.5, 1.0, 1.5)


class BaselineError(ValueError):
    """A baseline model that cannot be built or loaded; the message says what to do."""


def _discounts(counts: np.ndarray) -> np.ndarray:
    """D1, D2, D3+ from one order's count-of-counts (defaults where the estimate degenerates)."""
    n = [int(np.count_nonzero(counts == k)) for k in (1, 2, 3, 4)]
    out = np.array(DEFAULT_DISCOUNTS, dtype=np.float64)
    if min(n) > 0:
        y = n[0] / (n[0] + 2 * n[1])
        est = np.array([1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]])
        # A valid discount lies strictly inside (0, k); on tiny or odd corpora it may not.
        ok = (est > 0) & (est < np.array([1.0, 2.0, 3.0]))
        out = np.where(ok, est, out)
    return out


class NGramModel:
    """Interpolated modified Kneser-Ney over token ids 0..vocab_size-1."""

    def __init__(self, order: int = 5, vocab_size: int = VOCAB_SIZE):
        if order < 1:
            raise BaselineError(f"n-gram order must be at least 1, got {order}")
        self.order = order
        self.vocab_size = vocab_size
        self.bits = max(1, int(vocab_size - 1).bit_length())
        if self.bits * order > 63:
            raise BaselineError(
                f"order {order} is too high for a vocabulary of {vocab_size} "
                f"(at most {63 // self.bits}); choose a lower --order"
            )
        # Per order n (index n-1): n-gram keys and adjusted counts; history keys, totals and
        # the interpolation weight numerators D1 N1 + D2 N2 + D3 N3+.
        self.gram_keys: list[np.ndarray] = []
        self.gram_counts: list[np.ndarray] = []
        self.hist_keys: list[np.ndarray] = []
        self.hist_totals: list[np.ndarray] = []
        self.hist_backoff: list[np.ndarray] = []
        self.discounts = np.zeros((order, 3))
        self.n_tokens = 0

    # --- fitting ---------------------------------------------------------------------------

    def _padded(self, sequences: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """All sequences left-padded and concatenated; indices of the tokens to predict."""
        pad = np.full(max(self.order - 2, 0), PAD, dtype=np.int64)
        parts, targets, offset = [], [], 0
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            if seq.ndim != 1:
                raise BaselineError("each sequence must be a 1-D list of token ids")
            if len(seq) and (seq.min() < 0 or seq.max() >= self.vocab_size):
                raise BaselineError(
                    f"token ids must lie in 0..{self.vocab_size - 1}; is the corpus from this "
                    "vocabulary? Rebuild it with 'improv data'"
                )
            parts += [pad, seq]
            first = offset + len(pad) + 1
            targets.append(np.arange(first, first + max(len(seq) - 1, 0), dtype=np.int64))
            offset += len(pad) + len(seq)
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(parts), np.concatenate(targets)

    def _keys(self, padded: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Full-order n-gram key ending at each target (out-of-range context reads as PAD)."""
        key = np.zeros(len(targets), dtype=np.int64)
        for j in range(self.order - 1, -1, -1):
            pos = targets - j
            tok = np.where(pos >= 0, padded[np.maximum(pos, 0)], PAD)
            key = (key << self.bits) | tok
        return key

    def fit(self, sequences: Iterable[Sequence[int]]) -> NGramModel:
        """Count every n-gram of every sequence (each starts with its STYLE token)."""
        padded, targets = self._padded(sequences)
        if len(targets) == 0:
            raise BaselineError("no tokens to fit the n-gram model on; is the train split empty?")
        self.n_tokens = len(targets)
        keys, counts = np.unique(self._keys(padded, targets), return_counts=True)
        per_order: list[tuple[np.ndarray, np.ndarray]] = [(keys, counts.astype(np.int64))]
        for n in range(self.order - 1, 0, -1):
            upper_keys, upper_counts = per_order[-1]
            suffix = upper_keys & ((1 << (self.bits * n)) - 1)
            starts_with_pad = (suffix >> (self.bits * (n - 1))) == PAD
            # One per distinct left extension; a piece start has only PAD to its left,
            # so there the raw count (carried up from the longer PAD n-gram) is the right one.
            weight = np.where(starts_with_pad, upper_counts, 1)
            keys, inverse = np.unique(suffix, return_inverse=True)
            per_order.append((keys, np.bincount(inverse.ravel(), weights=weight).astype(np.int64)))
        per_order.reverse()

        self.gram_keys, self.gram_counts = [], []
        self.hist_keys, self.hist_totals, self.hist_backoff = [], [], []
        for n, (keys, counts) in enumerate(per_order, start=1):
            d = _discounts(counts)
            self.discounts[n - 1] = d
            hist = keys >> self.bits  # keys are sorted, so histories come out grouped
            cut = np.flatnonzero(np.diff(hist)) + 1
            bounds = np.concatenate([[0], cut])
            capped = np.minimum(counts, 3)
            self.gram_keys.append(keys)
            self.gram_counts.append(counts.astype(np.int32))
            self.hist_keys.append(hist[bounds])
            self.hist_totals.append(np.add.reduceat(counts, bounds).astype(np.int32))
            self.hist_backoff.append(np.add.reduceat(d[capped - 1], bounds))
        return self

    # --- scoring ---------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not self.gram_keys:
            raise BaselineError("the n-gram model is not fitted; call fit() or load() first")

    def _probs(self, keys: np.ndarray) -> np.ndarray:
        """p(last token | the others) for full-order keys, any shape."""
        self._check_fitted()
        flat = keys.ravel()
        p = np.full(flat.shape, 1.0 / self.vocab_size)
        for n in range(1, self.order + 1):
            gram = flat & ((1 << (self.bits * n)) - 1)
            hist = gram >> self.bits
            hk = self.hist_keys[n - 1]
            hi = np.minimum(np.searchsorted(hk, hist), len(hk) - 1)
            seen = hk[hi] == hist
            gk = self.gram_keys[n - 1]
            gi = np.minimum(np.searchsorted(gk, gram), len(gk) - 1)
            c = np.where(gk[gi] == gram, self.gram_counts[n - 1][gi], 0)
            d = np.where(c > 0, self.discounts[n - 1][np.clip(c, 1, 3) - 1], 0.0)
            interp = (np.maximum(c - d, 0.0) + self.hist_backoff[n - 1][hi] * p)
            p = np.where(seen, interp / self.hist_totals[n - 1][hi], p)
        return p.reshape(keys.shape)

    def _context_key(self, context: Sequence[int]) -> int:
        ctx = [int(t) for t in context][-(self.order - 1):] if self.order > 1 else []
        ctx = [PAD] * (self.order - 1 - len(ctx)) + ctx
        key = 0
        for t in ctx:
            if not 0 <= t < self.vocab_size:
                raise BaselineError(f"token {t} is outside the vocabulary (size {self.vocab_size})")
            key = (key << self.bits) | t
        return key

    def next_distribution(self, context: Sequence[int]) -> np.ndarray:
        """p(. | context) over the whole vocabulary; ``context`` is the piece so far."""
        base = self._context_key(context) << self.bits
        return self._probs(base | np.arange(self.vocab_size, dtype=np.int64))

    def logprob(self, context: Sequence[int], token: int) -> float:
        """Natural-log probability of ``token`` after ``context``."""
        if not 0 <= int(token) < self.vocab_size:
            raise BaselineError(f"token {token} is outside the vocabulary (size {self.vocab_size})")
        key = (self._context_key(context) << self.bits) | int(token)
        return float(np.log(self._probs(np.array([key], dtype=np.int64))[0]))

    def corpus_logprobs(self, sequences: Iterable[Sequence[int]]) -> list[np.ndarray]:
        """:meth:`sequence_logprobs` of many sequences in one vectorised pass."""
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        padded, targets = self._padded(seqs)
        logp = np.log(self._probs(self._keys(padded, targets)))
        sizes = np.cumsum([max(len(s) - 1, 0) for s in seqs])[:-1]
        return np.split(logp, sizes) if seqs else []

    def sequence_logprobs(self, seq: Sequence[int]) -> np.ndarray:
        """ln p(seq[i] | seq[:i]) for i = 1..len(seq)-1 (the first token, STYLE, is given)."""
        return self.corpus_logprobs([seq])[0]

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One .npz file: arrays plus a JSON header (no pickle)."""
        self._check_fitted()
        header = {"format": FORMAT, "order": self.order, "vocab_size": self.vocab_size,
                  "n_tokens": self.n_tokens}
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                  "discounts": self.discounts}
        for n in range(self.order):
            arrays[f"gram_keys_{n + 1}"] = self.gram_keys[n]
            arrays[f"gram_counts_{n + 1}"] = self.gram_counts[n]
            arrays[f"hist_keys_{n + 1}"] = self.hist_keys[n]
            arrays[f"hist_totals_{n + 1}"] = self.hist_totals[n]
            arrays[f"hist_backoff_{n + 1}"] = self.hist_backoff[n]
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> NGramModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != FORMAT:
                    raise BaselineError(f"{path}: unknown n-gram file format; delete it to refit")
                m = cls(header["order"], header["vocab_size"])
                m.n_tokens = int(header["n_tokens"])
                m.discounts = z["discounts"]
                for n in range(1, m.order + 1):
                    m.gram_keys.append(z[f"gram_keys_{n}"])
                    m.gram_counts.append(z[f"gram_counts_{n}"])
                    m.hist_keys.append(z[f"hist_keys_{n}"])
                    m.hist_totals.append(z[f"hist_totals_{n}"])
                    m.hist_backoff.append(z[f"hist_backoff_{n}"])
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, BaselineError):
                raise
            raise BaselineError(f"cannot read n-gram model {path} ({e}); delete it to refit") from e
        return m
