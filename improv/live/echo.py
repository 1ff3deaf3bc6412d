"""The echo guard: improv's own messages coming back into its input are not the player.

This module owns :class:`EchoGuard`, which stands between the scheduler and the
output port in the I/O process. It remembers what went out (the bytes, the time);
an input message with the same bytes arriving within ``window_s`` after one of
them is its echo — a DAW patched with MIDI thru, ``improv out`` connected back to
``improv in`` — and is dropped before the session or thru sees it. Without it the
machine would hear its own answer as a call and interrupt itself, and ``--thru``
would forward its own echo forever (a storm). A real player who strikes exactly
the machine's key, velocity and channel within the window is the one thing it
gets wrong, and only for that note.
"""

from __future__ import annotations

import threading
from collections import deque

import mido

from improv.live.clock import now

WINDOW_S = 0.25  # a loop through a DAW (large buffers) and a busy JACK and back: well within
LOOP_AFTER = 8  # echoes before the loop is reported (one could be a coincidence)


class EchoGuard:
    """Wraps an output (``send``); ``is_echo(data, t)`` for each input message."""

    def __init__(self, output, window_s: float = WINDOW_S) -> None:
        self.output = output
        self.window_s = window_s
        self.echoes = 0
        self._sent: dict[bytes, deque[float]] = {}
        self._order: deque[tuple[float, bytes]] = deque()
        self._lock = threading.Lock()

    def send(self, msg: mido.Message) -> None:
        data = bytes(msg.bytes())
        t = now()
        with self._lock:
            self._sent.setdefault(data, deque()).append(t)
            self._order.append((t, data))
            self._forget(t)
        self.output.send(msg)

    def is_echo(self, data: bytes, t: float) -> bool:
        """Whether ``data`` arriving at ``t`` is one of ours coming back (it is used up)."""
        with self._lock:
            self._forget(t)
            times = self._sent.get(data)
            if not times:
                return False
            times.popleft()  # one echo per message sent
            self.echoes += 1
            return True

    @property
    def looped(self) -> bool:
        """Enough echoes to say a feedback loop is patched."""
        return self.echoes >= LOOP_AFTER

    def _forget(self, t: float) -> None:
        old = t - self.window_s
        while self._order and self._order[0][0] < old:
            sent, data = self._order.popleft()
            times = self._sent.get(data)
            if times and times[0] == sent:  # else its echo came and used it up
                times.popleft()
            if times is not None and not times:
                del self._sent[data]
