"""The player's timing on the grid the model learned: sixteenths and eighth-note triplets.

The corpus is engraved music, so every onset and release the model ever saw sits on a
sixteenth or a triplet position; a live player's sit a few ticks either side. Fed as
played, those 1-3 tick offsets become TIME_SHIFT tokens the model never learned to read,
and it answers in kind: measured on the held-out calls, releases 10% early turned a
ballad's 23 notes per answer into 76, most of them 1-tick shifts apart. So the session
places each event of the player on the nearest grid position before it is encoded
(the recording keeps the real times).
"""

from __future__ import annotations

from improv.core.tokens import TICKS_PER_QUARTER

SIXTEENTH = TICKS_PER_QUARTER // 4  # 6 ticks
TRIPLET = TICKS_PER_QUARTER // 3  # 8 ticks: an eighth-note triplet


# Note values as engraved (ticks): a release a little short of one is heard as that value.
NOTE_VALUES = (6, 8, 12, 16, 18, 24, 36, 48, 72, 96, 144, 192)
# How short of a note value a release may fall and still be that value: a player lets go
# early by up to about a tenth of the note, but never later than this many ticks.
SHORT_SHARE, SHORT_MAX = 0.15, 8


def quantize_release(on_tick: int, release: float, origin: int = 0) -> int:
    """Where a note the player let go at ``release`` ends on the model's grid.

    A release just short of an engraved note value from its (quantized) onset ends at that
    value, as the corpus writes it; otherwise the release goes to the nearest grid position.
    Never at or before the onset: a note lasts at least a sixteenth.
    """
    held = release - on_tick
    for value in NOTE_VALUES:
        if value >= held:
            if value - held <= min(SHORT_MAX, SHORT_SHARE * value):
                return on_tick + value
            break
    return max(quantize_tick(release, origin), on_tick + SIXTEENTH)


def quantize_tick(tick: float, origin: int = 0) -> int:
    """The sixteenth or triplet position nearest ``tick``, counted from a bar line."""
    x = tick - origin
    best = min((round(x / g) * g for g in (SIXTEENTH, TRIPLET)), key=lambda q: (abs(q - x), q))
    return int(origin + best)


class Quantizer:
    """The player's events on the grid, one at a time; a note keeps its onset's place.

    Never past the beat line after the event: the stream may run a few ticks ahead of
    the clock, but never across a line the clock has not reached, where an answer may
    have to begin. ``offset``: stream ticks minus clock ticks.
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.onsets: dict[int, int] = {}  # key -> its quantized note-on tick

    def event(self, tick: int, pitch: int, velocity: int, offset: int = 0) -> int:
        origin = self.clock.bar_start(tick - offset) + offset
        cap = self.clock.next_beat(tick - offset) + offset
        if velocity > 0:
            q = self.onsets[pitch] = min(quantize_tick(tick, origin), cap)
            return q
        on = self.onsets.pop(pitch, None)
        if on is None:
            return min(quantize_tick(tick, origin), cap)
        return min(quantize_release(on, tick, origin), cap)
