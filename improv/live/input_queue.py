"""The input queue between a port and the session: bounded, and never loses a note-off.

This module owns :class:`InputQueue`, where an input port's messages wait, stamped,
for the session thread (in-process ports) or for the I/O link's reader (the I/O
process). Under a MIDI flood it drops other messages first, then the oldest
note-ons, and counts what it dropped.
"""

from __future__ import annotations

import threading
from collections import deque

import mido

_OTHER, _ON, _OFF = 0, 1, 2


def _kind(msg: mido.Message) -> int:
    if msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
        return _OFF
    return _ON if msg.type == "note_on" else _OTHER


class InputQueue:
    """A bounded FIFO of ``(time, message)`` that survives a MIDI flood.

    When full, it drops the oldest non-note message, else the oldest note-on.
    Note-offs are never dropped: when the queue holds nothing but note-offs, a new
    one waits in an overflow keyed by (channel, note) — at most 2048 entries — where
    a newer note-off for the same key replaces an older one ("coalesced").
    ``dropped`` and ``coalesced`` count what was lost.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("InputQueue needs maxsize >= 1")
        self.maxsize = maxsize
        self._cond = threading.Condition(threading.Lock())
        self._q: tuple[deque, deque, deque] = (deque(), deque(), deque())  # by _kind
        self._spill: dict[tuple[int, int], tuple[int, float, mido.Message]] = {}
        self._seq = 0
        self.received = 0
        self.dropped = 0
        self.coalesced = 0

    def __len__(self) -> int:
        return sum(map(len, self._q)) + len(self._spill)

    def put(self, t: float, msg: mido.Message) -> None:
        kind = _kind(msg)
        with self._cond:
            self.received += 1
            self._seq += 1
            item = (self._seq, t, msg)
            others, ons, _ = self._q
            if sum(map(len, self._q)) >= self.maxsize:
                if others:
                    others.popleft()
                elif kind == _OTHER:
                    self.dropped += 1
                    return
                elif ons:
                    ons.popleft()
                elif kind == _ON:
                    self.dropped += 1
                    return
                else:  # full of note-offs and this is one more
                    key = (msg.channel, msg.note)
                    if self._spill.pop(key, None) is not None:
                        self.coalesced += 1
                    self._spill[key] = item
                    self._cond.notify()
                    return
                self.dropped += 1
            self._q[kind].append(item)
            self._cond.notify()

    def _pop(self) -> tuple[float, mido.Message] | None:
        """The oldest item across the three deques and the overflow; caller holds the lock."""
        best, source = None, None
        for d in self._q:
            if d and (best is None or d[0][0] < best[0]):
                best, source = d[0], d
        if self._spill:
            key, item = next(iter(self._spill.items()))
            if best is None or item[0] < best[0]:
                del self._spill[key]
                return item[1], item[2]
        if source is None:
            return None
        source.popleft()
        return best[1], best[2]

    def get(self, timeout: float | None = None) -> tuple[float, mido.Message] | None:
        """The next ``(time, message)``; waits up to ``timeout`` (None: forever)."""
        with self._cond:
            item = self._pop()
            if item is None and timeout != 0:
                self._cond.wait_for(lambda: len(self) > 0, timeout)
                item = self._pop()
            return item

    def get_nowait(self) -> tuple[float, mido.Message] | None:
        return self.get(timeout=0)

    def drain(self) -> list[tuple[float, mido.Message]]:
        """Everything queued, oldest first."""
        with self._cond:
            out = []
            while (item := self._pop()) is not None:
                out.append(item)
            return out


