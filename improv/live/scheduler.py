"""Outgoing MIDI at absolute deadlines, and the one place that ends machine notes.

This module owns the scheduler thread: messages wait in a heap keyed by
``(deadline, note-ons last, push order)``; the thread sleeps on a condition
variable until about 1.5 ms before the first deadline, then spins (yielding
with ``time.sleep(0)``) and sends. Pushing an earlier deadline wakes it.

Every note-on it sends is registered as sounding until a note-off for its key
is sent, and every path that stops playing sends the missing note-offs:
``cancel`` (barge-in), ``panic``, ``stop``, an exception in the output's
``send`` (caught, counted, the thread goes on) and interpreter exit (atexit).
So "no stuck notes" is this module and its tests.

Deadlines are seconds of :func:`improv.live.clock.now`. A message sent more than
1 ms after its deadline is late: counted, sent at once, never dropped, never
reordered. Latency compensation sends everything ``latency_ms`` earlier.

Run ``python -m improv.live.scheduler`` to measure timing errors on this machine.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import mido

from improv.live.clock import now, try_realtime

LATE = 0.001  # seconds after the deadline that make a message late
MIN_NOTE = 0.002  # a scheduled note lasts at least this long, so its off follows its on
ASAP = float("-inf")  # the deadline of "send now" messages


def is_note_on(msg: mido.Message) -> bool:
    return msg.type == "note_on" and msg.velocity > 0


def is_note_off(msg: mido.Message) -> bool:
    return msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0)


@dataclass
class SchedulerStats:
    sent: int
    late: int
    send_errors: int
    callback_drops: int
    pending: int
    sounding: int
    realtime: bool
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class Scheduler:
    """Sends mido messages on ``output`` (anything with ``.send(msg)``) at deadlines."""

    SPIN = 0.0015  # seconds before a deadline when sleeping stops and spinning starts

    def __init__(
        self,
        output,
        *,
        latency_ms: float = 0.0,
        on_sent: Callable[[mido.Message, float], object] | None = None,
        errors_kept: int = 10_000,
        realtime: bool = True,
        name: str = "improv-scheduler",
    ) -> None:
        self.output = output
        self._want_realtime = realtime
        self.realtime = False  # True once the thread got a real-time priority
        self._latency = latency_ms / 1000.0
        self._cond = threading.Condition(threading.Lock())
        # Held while items move from the heap to the output, so cancel/panic never
        # miss a note-on that was popped but not yet registered.
        self._send_lock = threading.RLock()
        self._heap: list[tuple[float, int, int, mido.Message, Hashable]] = []
        self._seq = itertools.count()
        self._version = 0  # bumped when the head of the heap gets earlier
        self._sounding: dict[tuple[int, int], set[Hashable]] = {}
        self._channels: set[int] = set()
        self._closed = False  # no more pushes
        self._quit = False  # thread should end
        self.sent = 0
        self.late = 0
        self.send_errors = 0
        self.last_error: str | None = None
        self.callback_drops = 0
        self.errors: deque[float] = deque(maxlen=errors_kept)  # send time - target, seconds
        self._on_sent = on_sent
        self._sent_q: queue.Queue | None = None
        self._deliverer: threading.Thread | None = None
        if on_sent is not None:
            self._sent_q = queue.Queue(maxsize=10_000)
            self._deliverer = threading.Thread(
                target=self._deliver, name=f"{name}-on-sent", daemon=True
            )
            self._deliverer.start()
        # Daemon, so a forgotten stop() cannot hang exit; atexit sends the note-offs.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _live.add(self)

    # --- public API ---------------------------------------------------------------------------

    @property
    def latency_ms(self) -> float:
        return self._latency * 1000.0

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        with self._cond:
            self._latency = value / 1000.0
            self._version += 1
            self._cond.notify()

    def schedule(self, msg: mido.Message, deadline: float | None, *, tag: Hashable = None) -> int:
        """Send ``msg`` at ``deadline``; returns its push number. Ignored after stop().

        A deadline of None or <= 0 means "as soon as possible" (thru, program
        changes): sent before anything timed, in push order, outside the timing stats.
        """
        if deadline is None or deadline <= 0:
            deadline = ASAP
        with self._cond:  # the push number is taken under the lock: it is the push order
            if self._closed:
                return -1
            item = (deadline, 1 if is_note_on(msg) else 0, next(self._seq), msg, tag)
            heapq.heappush(self._heap, item)
            if self._heap[0] is item:
                self._version += 1
                self._cond.notify()
        return item[2]

    def schedule_note(
        self,
        pitch: int,
        velocity: int,
        on_deadline: float,
        off_deadline: float,
        channel: int = 0,
        tag: Hashable = None,
    ) -> None:
        """A note-on and its note-off (at least MIN_NOTE later), with one tag."""
        off_deadline = max(off_deadline, on_deadline + MIN_NOTE)
        on = mido.Message("note_on", channel=channel, note=pitch, velocity=max(1, velocity))
        off = mido.Message("note_off", channel=channel, note=pitch, velocity=0)
        with self._cond:  # both or neither, so stop() between them can't orphan the on
            if self._closed:
                return
            for deadline, msg in ((on_deadline, on), (off_deadline, off)):
                item = (deadline, 1 if msg is on else 0, next(self._seq), msg, tag)
                heapq.heappush(self._heap, item)
                if self._heap[0] is item:
                    self._version += 1
            self._cond.notify()

    def cancel(self, tag: Hashable = None) -> None:
        """Barge-in: drop pending messages of ``tag`` (None: all) and end its sounding notes."""
        with self._send_lock:
            with self._cond:
                self._drop_pending(tag)
            for key in [k for k, tags in self._sounding.items() if tag is None or tag in tags]:
                self._send(_off(*key), None, None)

    def panic(self) -> None:
        """Drop everything pending, end every sounding note, then All Notes Off per channel."""
        with self._send_lock:
            self.cancel(None)
            for channel in sorted(self._channels):
                self._send(mido.Message("control_change", channel=channel, control=123), None, None)

    def sounding(self) -> set[tuple[int, int]]:
        """(channel, pitch) of every note-on sent and not yet ended."""
        with self._send_lock:
            return set(self._sounding)

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def stop(self) -> None:
        """Panic, then end the thread. Safe to call twice and from any thread."""
        with self._cond:
            if self._quit:
                return
            self._closed = True
        self.panic()
        with self._cond:
            self._quit = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        if self._sent_q is not None and self._deliverer is not None:
            try:
                self._sent_q.put_nowait(None)
            except queue.Full:
                pass  # _deliver also ends on its own once the queue is empty
            if self._deliverer is not threading.current_thread():
                self._deliverer.join(timeout=2.0)  # the panic's note-offs reach the recorder
        _live.discard(self)

    close = stop

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> SchedulerStats:
        errs = sorted(self.errors)

        def pct(p: float) -> float | None:
            return errs[min(len(errs) - 1, int(p * len(errs)))] * 1000.0 if errs else None

        return SchedulerStats(
            sent=self.sent,
            late=self.late,
            send_errors=self.send_errors,
            callback_drops=self.callback_drops,
            pending=self.pending(),
            sounding=len(self._sounding),
            realtime=self.realtime,
            p50_ms=pct(0.50),
            p99_ms=pct(0.99),
            max_ms=errs[-1] * 1000.0 if errs else None,
        )

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        if self._want_realtime:
            self.realtime = try_realtime()
        while True:
            with self._cond:
                while True:
                    if self._quit:
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    target = self._heap[0][0] - self._latency
                    delay = target - now()
                    if delay <= self.SPIN:
                        version = self._version
                        break
                    self._cond.wait(delay - self.SPIN)
            # Spin outside the lock so pushes stay cheap; an earlier push restarts the wait.
            while now() < target and self._version == version and not self._quit:
                time.sleep(0)
            with self._send_lock:
                with self._cond:
                    due = []
                    t = now()
                    while self._heap and self._heap[0][0] - self._latency <= t:
                        due.append(heapq.heappop(self._heap))
                for deadline, _, _, msg, tag in due:
                    self._send(msg, tag, deadline - self._latency)

    def _send(self, msg: mido.Message, tag: Hashable, target: float | None) -> None:
        """Send one message and keep the books; caller holds _send_lock."""
        t = now()
        try:
            self.output.send(msg)
        except Exception as e:  # a broken output must not kill the thread or lose the books
            self.send_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
        self.sent += 1
        if target is not None and target != ASAP:
            self.errors.append(t - target)
            if t - target > LATE:
                self.late += 1
        if hasattr(msg, "channel"):
            self._channels.add(msg.channel)
        # A note-on whose send failed may still have sounded: keep it, so it gets an off.
        if is_note_on(msg):
            self._sounding.setdefault((msg.channel, msg.note), set()).add(tag)
        elif is_note_off(msg):
            self._sounding.pop((msg.channel, msg.note), None)
        if self._sent_q is not None:
            try:
                self._sent_q.put_nowait((msg, t))
            except queue.Full:
                self.callback_drops += 1

    def _drop_pending(self, tag: Hashable) -> None:
        """Remove pending messages of ``tag`` (None: all); caller holds _cond."""
        if tag is None:
            self._heap.clear()
        else:
            self._heap = [item for item in self._heap if item[4] != tag]
            heapq.heapify(self._heap)

    def _deliver(self) -> None:
        """Runs on_sent on its own thread, so a slow recorder never delays a send."""
        assert self._sent_q is not None and self._on_sent is not None
        while True:
            try:
                item = self._sent_q.get(timeout=0.1)
            except queue.Empty:
                if self._quit:
                    return
                continue
            if item is None:
                return
            try:
                self._on_sent(*item)
            except Exception:
                self.callback_drops += 1


def _off(channel: int, pitch: int) -> mido.Message:
    return mido.Message("note_off", channel=channel, note=pitch, velocity=0)


_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: every scheduler still running ends its notes."""
    for sched in list(_live):
        try:
            sched.stop()
        except Exception:
            pass


# --- measurement: python -m improv.live.scheduler -------------------------------------------------


class _NullOutput:
    def send(self, msg: mido.Message) -> None:
        pass


def measure(
    n: int = 2000, spacing: float = 0.002, busy: bool = False, realtime: bool = True
) -> SchedulerStats:
    """Schedule ``n`` messages ``spacing`` apart (optionally next to a CPU-hogging thread)."""
    stop = threading.Event()

    def hog() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    if busy:
        threading.Thread(target=hog, daemon=True).start()
    sched = Scheduler(_NullOutput(), realtime=realtime)
    t0 = now() + 0.05
    for i in range(n):
        sched.schedule(mido.Message("clock"), t0 + i * spacing)
    while sched.pending():
        time.sleep(0.05)
    time.sleep(0.01)
    stats = sched.stats()
    sched.stop()
    stop.set()
    return stats


def main() -> int:
    import sys

    print("2000 messages 2 ms apart; error = send time - deadline")
    for realtime in (False, True):
        for interval in (0.005, 0.001):
            sys.setswitchinterval(interval)
            for busy in (False, True):
                s = measure(busy=busy, realtime=realtime)
                print(
                    f"realtime {'yes' if s.realtime else 'no '}  "
                    f"switchinterval {interval * 1000:g} ms  busy thread {'yes' if busy else 'no '}"
                    f"  late {s.late:4}  p50 {s.p50_ms:.3f} ms  p99 {s.p99_ms:.3f} ms  "
                    f"max {s.max_ms:.3f} ms"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
