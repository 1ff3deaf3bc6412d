"""The answer's dynamics: the call's loudness and accents carried into the answer.

The corpus the model learned from is engraved music: nearly every note has the same
velocity, so the model's own VELOCITY tokens say little. A musician answering a phrase
matches its level (a loud call gets a loud answer) and often its accents (the beats
the call leans on). This module owns that mapping: :meth:`Dynamics.of_call` reads the
call's note-on velocities by position in the bar, and :meth:`Dynamics.velocity` turns
the model's velocity for an answer note into one at the call's level, with the call's
accent at that position, keeping a part of the model's own variation. ``amount`` (the
preset's ``dynamics``) blends between the model (0) and the call (1).
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT = 6  # ticks per accent slot: a sixteenth at 24 per quarter
MODEL_SHARE = 0.5  # how much of the model's own deviation from the call's level is kept
SHRINK = 2.0  # accents heard once count for a third: one loud note is not a pattern


@dataclass(frozen=True)
class Dynamics:
    """The call's level (mean velocity) and accent per sixteenth of the bar."""

    level: float | None = None  # None: nothing heard, the model's velocities stand
    accents: tuple[float, ...] = ()
    bar_origin: int = 0

    @classmethod
    def of_call(cls, notes: list[tuple[int, int]], bar_origin: int, bar_ticks: int) -> Dynamics:
        """From the call's (tick, velocity) note-ons; ``bar_origin`` is any bar line."""
        if not notes:
            return cls()
        level = sum(v for _, v in notes) / len(notes)
        slots = max(1, bar_ticks // SLOT)
        total, count = [0.0] * slots, [0] * slots
        for tick, v in notes:
            k = round((tick - bar_origin) % bar_ticks / SLOT) % slots
            total[k] += v - level
            count[k] += 1
        accents = tuple(t / (n + SHRINK) for t, n in zip(total, count, strict=True))
        return cls(level, accents, bar_origin)

    def velocity(self, tick: int, model_velocity: int, amount: float = 1.0) -> int:
        """The answer note's velocity (1..127) at ``tick``."""
        if self.level is None or amount <= 0:
            return int(model_velocity)
        accent = 0.0
        if self.accents:
            slots = len(self.accents)
            accent = self.accents[round((tick - self.bar_origin) / SLOT) % slots]
        # The model has heard the call's VELOCITY tokens and plays near its level already:
        # what it adds of its own is its deviation from that level.
        target = self.level + accent + MODEL_SHARE * (model_velocity - self.level)
        v = (1.0 - amount) * model_velocity + amount * target
        return int(min(127, max(1, round(v))))
