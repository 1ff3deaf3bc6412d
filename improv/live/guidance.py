"""Guidance: lean the answer on what the call implies, with a second stream that lacks it.

A language model continuing a prompt mixes two things: what the prompt implies and what
its style makes likely anyway. Contrasting the logits with and without the prompt and
pushing along the difference (classifier-free guidance, applied to language models by
Sanchez et al. 2023, "Stay on topic with Classifier-Free Guidance") strengthens the first.
For improv the prompt is the call: the guide stream holds the same STYLE and the answer's
own tokens but not the call, so ``cond + g * (cond - uncond)`` favours the answer the call
asks for (its rhythm, motifs, register) over a generic phrase in the style.

This module owns that second stream. It costs one more decode step per answer token,
only while answering; the call is never fed to it.
"""

from __future__ import annotations

import numpy as np

from improv.core import tokens as tk


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    finite = np.isfinite(x)
    if not finite.any():
        return x
    top = x[finite].max()
    return x - (top + np.log(np.exp(x[finite] - top).sum()))


class Guide:
    """The unconditioned twin of an answer: same style, same answer tokens, no call."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.logits: np.ndarray | None = None

    def start(self, style: str | int | None, start_tick: int, bar_start: int,
              meter: tk.Meter, velocity_bin: int) -> None:
        """A stream that begins where the answer begins, as a piece would: a bar line, the
        rest of the bar up to the answer's start, the velocity the answer starts with."""
        enc = tk.StreamEncoder(meter=meter, tick=bar_start, bar_start=bar_start)
        toks = enc.start(None) + enc.advance(start_tick)
        if velocity_bin >= 0:
            toks.append(tk.velocity_token(velocity_bin))
        self.engine.reset(style)
        self.logits = self.engine.feed(toks)

    def step(self, token: int) -> None:
        if self.logits is not None:
            self.logits = self.engine.step(int(token))

    def stop(self) -> None:
        self.logits = None

    @property
    def active(self) -> bool:
        return self.logits is not None

    def mix(self, cond: np.ndarray, strength: float) -> np.ndarray:
        """``cond + strength * (cond - uncond)`` on log-probabilities; masked entries stay."""
        if self.logits is None or strength <= 0:
            return cond
        c, u = log_softmax(cond), log_softmax(self.logits)
        out = c + strength * (c - np.where(np.isfinite(u), u, c))
        return np.where(np.isfinite(c), out, c)
