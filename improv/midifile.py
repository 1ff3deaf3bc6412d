"""Standard MIDI Files <-> note events on the 24-ticks-per-quarter grid.

(Stub: the interface below is fixed; the reader and writer are being written.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from improv.tokens import Note


@dataclass
class Score:
    """A piece on the musical grid (24 ticks per quarter).

    ``tempos`` holds ``(tick, microseconds_per_quarter)``; ``meters`` holds
    ``(tick, numerator, denominator)``; ``end_tick`` is where the piece ends.
    """

    notes: list[Note] = field(default_factory=list)
    tempos: list[tuple[int, int]] = field(default_factory=lambda: [(0, 500_000)])
    meters: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, 4, 4)])
    end_tick: int = 0
