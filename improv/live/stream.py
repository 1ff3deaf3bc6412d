"""The token stream of one set: encoder, engine and sampler, kept in step.

This module owns the one rule that keeps the live context coherent: every token
that enters the model also enters the encoder (time, bar lines, sounding keys)
and the sampler (what the machine may play next), in the same order, and the
count of tokens fed is kept so that a rewind takes back exactly what was fed,
even after the engine's window has rolled. A :class:`Checkpoint` is the whole
stream at one moment; :meth:`Stream.restore` goes back to it (a call that goes on
after a prepared answer, a barge-in that keeps only what was heard).

Ticks here are stream ticks: they only run forward, from the bar line the set's
first note fell on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from improv.core import tokens as tk
from improv.live.sampler import Sampler, SamplerState


@dataclass(frozen=True)
class Checkpoint:
    fed: int  # tokens fed when it was taken
    encoder: tk.StreamEncoder
    sampler: SamplerState


class Stream:
    """What the model has heard, as tokens; every change of it goes through here."""

    def __init__(self, engine, sampler: Sampler, meter: tk.Meter) -> None:
        self.engine = engine
        self.sampler = sampler
        self.meter = meter
        self.encoder = tk.StreamEncoder(meter)
        self.fed = 0  # tokens that entered the engine since the set began
        self.logits: np.ndarray | None = None  # the model's scores for the next token

    @property
    def tick(self) -> int:
        return self.encoder.tick

    def start(self, tick: int, style: str | int | None) -> str | None:
        """A new stream from ``tick`` (a bar line); returns a line to say if the style failed."""
        self.encoder = tk.StreamEncoder(self.meter, tick)
        self.sampler.reset(tick)
        problem = None
        try:
            self.logits = self.engine.reset(style)
        except Exception as e:  # an unknown style must not stop the set
            problem = f"style {style!r} unavailable ({e}); using the model's first style"
            self.logits = self.engine.reset(None)
        self.feed(self.encoder.start(None), human=True)
        return problem

    # --- tokens in ---------------------------------------------------------------------------

    def feed(self, toks: list[int], human: bool) -> None:
        """Tokens this stream's encoder just made (the player's notes, a TURN, a close)."""
        if not toks:
            return
        self.logits = self.engine.feed(toks)
        self.fed += len(toks)
        self.sampler.observe_all(toks, human=human)

    def step(self, tok: int) -> np.ndarray:
        """One of the machine's own tokens; returns the scores for the next one."""
        self.encoder.observe(tok)
        self.sampler.observe(tok)
        self.logits = self.engine.step(tok)
        self.fed += 1
        return self.logits

    def replay(self, toks: list[int]) -> None:
        """Tokens made elsewhere (an answer's heard part, restored after a rewind)."""
        for tok in toks:
            self.encoder.observe(tok)
        self.feed(toks, human=False)

    # --- events (each returns the tokens it fed) ----------------------------------------------

    def note_on(self, tick: int, pitch: int, velocity: int) -> list[int]:
        toks = self.encoder.note_on(tick, pitch, velocity)
        self.feed(toks, human=True)
        return toks

    def note_off(self, tick: int, pitch: int, human: bool = True) -> list[int]:
        toks = self.encoder.note_off(tick, pitch)
        self.feed(toks, human=human)
        return toks

    def close_turn(self, tick: int | None, start: int, human: bool = True) -> list[int]:
        """Keys still sounding end at ``tick`` (None: no close), TURN, time to ``start``."""
        toks = [] if tick is None else self.encoder.close(max(self.encoder.tick, tick))
        toks += self.encoder.turn()
        toks += self.encoder.advance(start)
        self.feed(toks, human=human)
        return toks

    # --- back in time ---------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.fed, self.encoder.copy(), self.sampler.checkpoint())

    def restore(self, cp: Checkpoint) -> None:
        """The stream as it was at ``cp``: the engine forgets what was fed since."""
        self.engine.rewind(self.fed - cp.fed)
        self.fed = cp.fed
        self.encoder = cp.encoder.copy()
        self.sampler.restore(cp.sampler)
        self.logits = self.engine.logits

    def what_if(self, last: list[int], instead: list[int]) -> np.ndarray:
        """The scores had ``instead`` been fed in place of the ``last`` tokens fed.

        The engine is left exactly as it was (the ``last`` tokens are fed back).
        """
        self.engine.rewind(len(last))
        logits = self.engine.feed(instead)
        self.engine.rewind(len(instead))
        self.logits = self.engine.feed(last)
        return logits

    def restyle(self, style: str | int) -> None:
        """The STYLE token sits at position 0: re-encode the recent context under a new one."""
        keep = self.engine.context_tokens[1:][-(self.engine.context // 2):]
        self.engine.reset(style)
        self.logits = self.engine.feed(keep) if keep else self.engine.logits
