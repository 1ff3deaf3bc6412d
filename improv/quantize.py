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

from improv.tokens import TICKS_PER_QUARTER

SIXTEENTH = TICKS_PER_QUARTER // 4  # 6 ticks
TRIPLET = TICKS_PER_QUARTER // 3  # 8 ticks: an eighth-note triplet


def quantize_tick(tick: float, origin: int = 0) -> int:
    """The sixteenth or triplet position nearest ``tick``, counted from a bar line."""
    x = tick - origin
    best = min((round(x / g) * g for g in (SIXTEENTH, TRIPLET)), key=lambda q: (abs(q - x), q))
    return int(origin + best)
