"""The n-gram baseline as an engine: what the live session drives, from a counting table.

This module owns :class:`NGramEngine`, which offers what :class:`improv.live.session.Session`
uses of :class:`improv.live.engine.Engine` (reset, feed, step, rewind, the context, the last
logits, stats) with logits = ln p(next | the last order-1 tokens) of an
:class:`improv.learn.baseline.NGramModel`. So ``improv eval --conversation`` answers calls with
the n-gram through the same hand-over, sampler and voice as the model.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from improv.core import tokens as tk
from improv.learn.baseline import NGramModel
from improv.live.engine import EngineStats, ModelError


class NGramEngine:
    """What :class:`~improv.live.session.Session` uses of
:class:`~improv.live.engine.Engine`, from an
    n-gram: logits = ln p(next | the last order-1 tokens), so the n-gram answers through the
    same hand-over, sampler and voice as the model. Distributions are cached by their
    context (a session revisits the same few contexts many times)."""

    def __init__(self, model: NGramModel, styles: dict[str, int] | None = None,
                 context: int = 512, cache_size: int = 50_000):
        self.model, self.context = model, context
        self.styles = styles or {n: i for i, n in enumerate(tk.CORPUS_STYLES)}
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._times: list[float] = []
        self.provider = "ngram"
        self.logits: np.ndarray | None = None
        self.reset(None)

    def style_token(self, style: str | int | None) -> int:
        if style is None:
            style = next(iter(self.styles.values()), 0)
        if isinstance(style, str):
            if style not in self.styles:
                raise ModelError(f"style {style!r} is not in this model; "
                                 f"use one of {', '.join(self.styles)}")
            style = self.styles[style]
        return tk.style_token(int(style))

    def reset(self, style: str | int | None = None) -> np.ndarray:
        self._window = [self.style_token(style)]
        self.logits = self._next()
        return self.logits

    @property
    def position(self) -> int:
        return len(self._window)

    @property
    def context_tokens(self) -> list[int]:
        return list(self._window)

    def feed(self, toks) -> np.ndarray:
        toks = [int(t) for t in np.asarray(toks).reshape(-1)]
        if not toks:
            return self.logits
        if min(toks) < 0 or max(toks) >= tk.VOCAB_SIZE:
            raise ValueError(f"token ids must be in 0..{tk.VOCAB_SIZE - 1}")
        self._window += toks
        if len(self._window) > self.context:  # the engine's roll: STYLE + the last half
            self._window = [self._window[0], *self._window[-(self.context // 2):]]
        self.logits = self._next()
        return self.logits

    def step(self, token: int) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.feed([token])
        self._times.append(time.perf_counter() - t0)
        return out

    def rewind(self, n: int) -> None:
        if n <= 0:
            return
        n = min(n, len(self._window) - 1)
        del self._window[len(self._window) - n :]
        self.logits = None

    @property
    def stats(self) -> EngineStats:
        ms = np.array(self._times[-4096:] or [0.0]) * 1e3
        busy = sum(self._times)
        return EngineStats(median_ms=float(np.median(ms)), p99_ms=float(np.percentile(ms, 99)),
                           max_ms=float(ms.max()),
                           tokens_per_s=len(self._times) / busy if busy else 0.0,
                           steps=len(self._times), rolls=0, roll_waits=0, provider=self.provider)

    def twin(self) -> NGramEngine:
        """A second stream of the same n-gram (the session's guidance stream); one cache."""
        other = NGramEngine(self.model, self.styles, self.context, self._cache_size)
        other._cache = self._cache
        return other

    def close(self) -> None:
        pass

    def _next(self) -> np.ndarray:
        key = tuple(self._window[-(self.model.order - 1):]) if self.model.order > 1 else ()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        else:
            with np.errstate(divide="ignore"):
                hit = np.log(self.model.next_distribution(key)).astype(np.float32)
            self._cache[key] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return hit.copy()  # callers may write into their logits


