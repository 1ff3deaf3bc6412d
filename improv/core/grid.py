"""The bar grid of a token stream: where its bar lines fall as time shifts go by.

This module owns bar and meter tracking, once: the streaming encoder uses a grid
to place BAR tokens, the sampler uses one to know when a BAR is due and how far a
time shift may go. Meter changes wait for their first bar line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TICKS_PER_QUARTER = 24


@dataclass(frozen=True)
class Meter:
    numerator: int = 4
    denominator: int = 4

    @property
    def bar_ticks(self) -> int:
        return self.numerator * TICKS_PER_QUARTER * 4 // self.denominator


@dataclass
class BarGrid:
    """The stream's position and its bar lines; ``marked``: the BAR at ``bar_start`` is in."""

    meter: Meter = field(default_factory=Meter)
    tick: int = 0
    bar_start: int = 0
    marked: bool = False
    pending: list[tuple[int, Meter]] = field(default_factory=list)  # (first line, meter)

    def copy(self) -> BarGrid:
        return BarGrid(self.meter, self.tick, self.bar_start, self.marked, list(self.pending))

    def set_meter(self, tick: int, numerator: int, denominator: int) -> None:
        """A new meter whose first bar line is at ``tick`` (now, if ``tick`` has passed)."""
        m = Meter(max(1, numerator), max(1, denominator))
        if m.bar_ticks < 1:
            m = Meter()
        self.pending.append((max(tick, self.tick), m))
        self.pending.sort(key=lambda x: x[0])

    def next_line(self) -> int:
        line = self.bar_start + self.meter.bar_ticks
        if self.pending and self.pending[0][0] < line:
            line = self.pending[0][0]
        return line

    def move(self, ticks: int) -> None:
        """Time goes on by ``ticks``; lines crossed without a BAR still count."""
        self.tick += ticks
        while self.tick >= self.next_line():
            if self.pending and self.pending[0][0] <= self.tick:
                self.bar_start, self.meter = self.pending.pop(0)
            else:
                self.bar_start += self.meter.bar_ticks
            self.marked = False

    def arrive(self) -> bool:
        """A meter due at the current tick takes effect; True when a BAR is due here."""
        if self.pending and self.pending[0][0] <= self.tick:
            while self.pending and self.pending[0][0] <= self.tick:
                _, self.meter = self.pending.pop(0)
            # A meter set live at a line already marked must not mark it twice.
            self.marked = self.marked and self.bar_start == self.tick
            self.bar_start = self.tick
        return self.due

    @property
    def due(self) -> bool:
        return self.tick == self.bar_start and not self.marked

    def mark(self) -> None:
        """A BAR entered the stream: on a line it marks it; off the grid it changes nothing."""
        self.arrive()
        if self.tick == self.bar_start:
            self.marked = True
