"""Motifs: the call's melodic shapes, remembered so the answer can take them up.

A musician answering a phrase takes up its motifs: the same melodic shape (two
successive intervals of the top line), on other notes or the same. This module owns
the top lines the sampler needs for that: the player's recent one (the call) and the
machine's in the answer being played, each the highest note at every onset. From them
:meth:`MotifMemory.bias` weighs each pitch by how well it continues one of the call's
shapes from where the answer's line is now, and :meth:`MotifMemory.repeated` finds a
pitch struck too often in a row (a known way for sampled music to get stuck).
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from improv.core import tokens as tk

CALL_ONSETS = 32  # how much of the player's top line is remembered
MAX_REPEATS = 4  # a pitch struck this many times in a row may not come a fifth time


class MotifMemory:
    """The player's and the machine's top lines, and the call's interval shapes."""

    def __init__(self) -> None:
        self.human: deque[tuple[int, int]] = deque(maxlen=CALL_ONSETS)  # (tick, pitch)
        self.machine: list[tuple[int, int]] = []  # the answer in progress
        self._shapes: dict[int, Counter[int]] | None = None
        self._steps: Counter[int] | None = None

    def copy(self) -> MotifMemory:
        new = MotifMemory()
        new.human = deque(self.human, maxlen=self.human.maxlen)
        new.machine = list(self.machine)
        return new

    def observe(self, pitch: int, tick: int, human: bool) -> None:
        """A note-on entered the context; notes of one onset keep only the highest."""
        line = self.human if human else self.machine
        if line and line[-1][0] == tick:
            if pitch > line[-1][1]:
                line[-1] = (tick, pitch)
        else:
            line.append((tick, pitch))
        if human:
            self._shapes = self._steps = None

    def turn(self) -> None:
        """A TURN: the machine's next notes start a new line."""
        self.machine.clear()

    def _learn(self) -> None:
        p = [q for _, q in self.human]
        iv = np.diff(p).astype(int).tolist() if len(p) > 1 else []
        self._steps = Counter(iv)
        self._shapes = {}
        for a, b in zip(iv, iv[1:], strict=False):
            self._shapes.setdefault(a, Counter())[b] += 1

    def bias(self) -> np.ndarray | None:
        """Weights 0..1 over the 88 keys for the answer's next top-line note, or None.

        After two notes of the answer: the pitches that complete one of the call's shapes
        from the answer's last interval (weighted by how often the call used it). After
        one (or when no shape starts with that interval): the call's intervals from the
        last note, at half weight.
        """
        if not self.machine or len(self.human) < 3:
            return None
        if self._shapes is None:
            self._learn()
        last = self.machine[-1][1]
        nexts = None
        if len(self.machine) >= 2:
            nexts = self._shapes.get(last - self.machine[-2][1])
        scale = 1.0
        if not nexts:
            nexts, scale = self._steps, 0.5
        if not nexts:
            return None
        w = np.zeros(tk.N_PITCHES)
        top = max(nexts.values())
        for step, count in nexts.items():
            k = last + step - tk.LOWEST_PITCH
            if 0 <= k < tk.N_PITCHES:
                w[k] = max(w[k], scale * count / top)
        return w

    def repeated(self, limit: int = MAX_REPEATS) -> int | None:
        """The pitch the answer's top line has struck ``limit`` times running, if any."""
        if len(self.machine) < limit:
            return None
        tail = {p for _, p in self.machine[-limit:]}
        return tail.pop() if len(tail) == 1 else None
