"""The scheduler's book: what waits to be sent, and which machine notes sound.

This module owns the one copy of the bookkeeping every scheduler drives (the
live :class:`~improv.live.scheduler.Scheduler` thread, the I/O process, the
simulator and the stuck-note soak):

* pending messages keyed by their deadline TICK (a float; ``ASAP`` = -inf for
  "as soon as possible"), at one tick note-offs and other messages before
  note-ons, push order otherwise;
* the sounding machine notes, ``(channel, pitch) -> set of tags``, and the
  channels used;
* what ending them takes: :meth:`Book.cancel` (one tag) and :meth:`Book.panic`
  (everything, then CC 123 on every channel used) return the messages to send;
  the caller sends them and hands each back to :meth:`Book.sent`.

It has no thread and no clock: ticks go in, messages come out. Binding a tick to
a time is the driver's business (late binding: at send time).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable

import mido

ASAP = float("-inf")  # the deadline of "send now" messages (thru, program changes)
MIN_NOTE_TICKS = 0.1  # a machine note lasts at least this long (2 ms at 125 BPM)


def is_note_on(msg: mido.Message) -> bool:
    return msg.type == "note_on" and msg.velocity > 0


def is_note_off(msg: mido.Message) -> bool:
    return msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0)


def note_off(channel: int, pitch: int) -> mido.Message:
    return mido.Message("note_off", channel=channel, note=pitch, velocity=0)


Pending = tuple[float, int, int, mido.Message, Hashable]  # (tick, on last, seq, msg, tag)


class Book:
    """Pending messages by deadline tick and the sounding machine notes; not thread-safe
    (the driver holds its lock around every call)."""

    def __init__(self) -> None:
        self._heap: list[Pending] = []
        self._seq = itertools.count()
        self._sounding: dict[tuple[int, int], set[Hashable]] = {}
        self.channels: set[int] = set()
        self.restruck = 0  # note-ons sent for a key the machine already held
        self.skipped = 0  # note-ons too late to play (see skip)
        self._unsent: set[tuple[int, int, Hashable]] = set()  # skipped, their offs to come

    # --- pending -----------------------------------------------------------------------------

    def push(self, msg: mido.Message, tick: float | None, tag: Hashable = None) -> int:
        """Queue ``msg`` for ``tick`` (None: as soon as possible); returns its push number."""
        item = (ASAP if tick is None else float(tick), 1 if is_note_on(msg) else 0,
                next(self._seq), msg, tag)
        heapq.heappush(self._heap, item)
        return item[2]

    def next_tick(self) -> float | None:
        """The deadline of the first pending message, or None."""
        return self._heap[0][0] if self._heap else None

    def head(self) -> Pending | None:
        return self._heap[0] if self._heap else None

    def pop_due(self, tick: float) -> list[Pending]:
        """Every pending message due at or before ``tick``, in sending order."""
        due = []
        while self._heap and self._heap[0][0] <= tick:
            due.append(heapq.heappop(self._heap))
        return due

    def drop(self, tag: Hashable = None) -> int:
        """Forget pending messages of ``tag`` (None: all); returns how many."""
        n = len(self._heap)
        if tag is None:
            self._heap.clear()
        else:
            self._heap = [item for item in self._heap if item[4] != tag]
            heapq.heapify(self._heap)
        return n - len(self._heap)

    def pending(self, tag: Hashable = ...) -> int:
        """Pending messages (of ``tag`` if given)."""
        return sum(1 for item in self._heap if tag is ... or item[4] == tag)

    # --- sounding ------------------------------------------------------------------------------

    def sent(self, msg: mido.Message, tag: Hashable = None) -> None:
        """``msg`` went out (or may have: a failed send of a note-on still gets its off)."""
        if hasattr(msg, "channel"):
            self.channels.add(msg.channel)
        if is_note_on(msg):
            tags = self._sounding.setdefault((msg.channel, msg.note), set())
            if tags and tag != "thru":
                self.restruck += 1
            tags.add(tag)
        elif is_note_off(msg):
            self._sounding.pop((msg.channel, msg.note), None)

    def skip(self, msg: mido.Message, tag: Hashable = None) -> None:
        """A note-on too late to play is not sent: nothing sounds, and its note-off, when
        due, is not sent either (see :meth:`wanted`)."""
        self.skipped += 1
        self._unsent.add((msg.channel, msg.note, tag))

    def wanted(self, msg: mido.Message, tag: Hashable = None) -> bool:
        """False for the note-off of a skipped note-on (a key that does not sound)."""
        if not self._unsent or not is_note_off(msg):
            return True
        key = (msg.channel, msg.note, tag)
        if key in self._unsent and (msg.channel, msg.note) not in self._sounding:
            self._unsent.discard(key)
            return False
        return True

    def sounding(self, tag: Hashable = ...) -> set[tuple[int, int]]:
        """(channel, pitch) of every note-on sent and not yet ended (of ``tag`` if given)."""
        return {k for k, tags in self._sounding.items() if tag is ... or tag in tags}

    def cancel(self, tag: Hashable = None) -> list[mido.Message]:
        """Drop pending of ``tag`` (None: all); the note-offs that end its sounding notes."""
        self.drop(tag)
        self._unsent = {k for k in self._unsent if tag is not None and k[2] != tag}
        return [note_off(*k) for k, tags in self._sounding.items() if tag is None or tag in tags]

    def panic(self) -> list[mido.Message]:
        """Drop everything; the note-offs of every sounding note, then CC 123 per channel used."""
        offs = self.cancel(None)
        return offs + [mido.Message("control_change", channel=ch, control=123)
                       for ch in sorted(self.channels)]
