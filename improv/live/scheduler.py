"""Outgoing MIDI at deadlines in clock ticks, and the one place that ends machine notes.

This module owns the scheduler thread that drives a :class:`~improv.live.book.Book`
(pending messages by deadline tick, the sounding machine notes) against a
:class:`~improv.live.clock.Clock`. Deadlines stay in ticks until the moment of
sending: the thread binds the head's tick to seconds with the clock's mapping of
that moment (late binding), and re-binds whenever the clock changes
(``Clock.on_change``), so a tempo change or a MIDI clock follower's correction
reaches every queued note. It sleeps on a condition variable until about 0.5 ms
before the head's time, then spins (yielding with ``time.sleep(0)``) and sends.

Every path that stops playing sends the missing note-offs: ``cancel``
(barge-in), ``panic``, ``stop``, an exception in the output's ``send`` (caught,
counted, the thread goes on) and interpreter exit (atexit).

A message sent more than 1 ms after its bound time is late: counted, sent at
once, never reordered. A note-on more than ``max_late_ms`` (50 ms) late — the
machine stalled, a flood held the CPU — is skipped, not burst out with the
others, and its note-off is skipped with it (:meth:`Book.skip`). Latency
compensation sends everything ``latency_ms`` earlier.

Run ``python -m improv.live.scheduler`` to measure timing errors on this machine.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import mido

from improv.live.book import ASAP, Book, is_note_off, is_note_on
from improv.live.clock import Clock, now, try_realtime

__all__ = ["ASAP", "LATE", "Scheduler", "SchedulerStats", "is_note_off", "is_note_on"]

LATE = 0.001  # seconds after the bound time that make a message late
_HAIR = 1e-9  # ticks: a float hair before the head's tick is on it


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
    skipped: int = 0  # note-ons too late to play, not sent


def timing_stats(errors, **counts) -> SchedulerStats:
    """SchedulerStats from send errors (seconds) and the counters."""
    errs = sorted(errors)

    def pct(p: float) -> float | None:
        return errs[min(len(errs) - 1, int(p * len(errs)))] * 1000.0 if errs else None

    return SchedulerStats(p50_ms=pct(0.50), p99_ms=pct(0.99),
                          max_ms=errs[-1] * 1000.0 if errs else None, **counts)


class Scheduler:
    """Sends mido messages on ``output`` (anything with ``.send(msg)``) at ``clock`` ticks."""

    # Seconds before a deadline when sleeping stops and spinning starts. A real-time thread's
    # wait wakes within ~0.1 ms; each ms of spinning is a ms of a core taken from the model
    # (1.5 ms cost 37% of a core at a note every 4 ms, 0.5 ms costs 12%, send p99 0.10 ms).
    SPIN = 0.0005

    def __init__(
        self,
        output,
        clock: Clock,
        *,
        latency_ms: float = 0.0,
        on_sent: Callable[[mido.Message, float, Hashable], object] | None = None,
        errors_kept: int = 10_000,
        realtime: bool = True,
        name: str = "improv-scheduler",
        max_late_ms: float = 50.0,
    ) -> None:
        self.output = output
        self.clock = clock  # the deadlines' ticks are this clock's
        self._want_realtime = realtime
        self.realtime = False  # True once the thread got a real-time priority
        self._latency = latency_ms / 1000.0
        self.max_late = max_late_ms / 1000.0
        self._cond = threading.Condition(threading.Lock())
        # Held while items move from the book to the output, so cancel/panic never
        # miss a note-on that was popped but not yet registered.
        self._send_lock = threading.RLock()
        self.book = Book()  # pending under _cond, sounding under _send_lock
        self._version = 0  # bumped when the head's time may have moved
        self._closed = False  # no more pushes
        self._quit = False  # thread should end
        self.sent = 0
        self.late = 0
        self.send_errors = 0
        self.last_error: str | None = None
        self.callback_drops = 0
        self.errors: deque[float] = deque(maxlen=errors_kept)  # send time - bound time, seconds
        self._on_sent = on_sent
        self._sent_q: queue.Queue | None = None
        self._deliverer: threading.Thread | None = None
        if on_sent is not None:
            self._sent_q = queue.Queue(maxsize=10_000)
            self._deliverer = threading.Thread(
                target=self._deliver, name=f"{name}-on-sent", daemon=True
            )
            self._deliverer.start()
        self._unsubscribe = self.clock.on_change(self._rebind)
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

    def schedule(self, msg: mido.Message, tick: float | None, *, tag: Hashable = None) -> int:
        """Send ``msg`` at clock tick ``tick``; returns its push number. Ignored after stop().

        A tick of None means "as soon as possible" (thru, program changes): sent
        before anything timed, in push order, outside the timing stats.
        """
        with self._cond:  # the push number is taken under the lock: it is the push order
            if self._closed:
                return -1
            seq = self.book.push(msg, tick, tag)
            head = self.book.head()
            if head is not None and head[2] == seq:
                self._version += 1
                self._cond.notify()
        return seq

    def cancel(self, tag: Hashable = None) -> None:
        """Barge-in: drop pending messages of ``tag`` (None: all) and end its sounding notes."""
        with self._send_lock:
            with self._cond:
                offs = self.book.cancel(tag)
            for msg in offs:
                self._send(msg, tag, None)

    def panic(self) -> None:
        """Drop everything pending, end every sounding note, then All Notes Off per channel."""
        with self._send_lock:
            with self._cond:
                msgs = self.book.panic()
            for msg in msgs:
                self._send(msg, None, None)

    def heartbeat(self) -> None:
        """The session is alive: nothing to do in process (the I/O link's watchdog needs it)."""

    def sounding(self, tag: Hashable = ...) -> set[tuple[int, int]]:
        """(channel, pitch) of every note-on sent and not yet ended."""
        with self._send_lock:
            return self.book.sounding(tag)

    def pending(self, tag: Hashable = ...) -> int:
        with self._cond:
            return self.book.pending(tag)

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
        self._unsubscribe()
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
        return timing_stats(
            list(self.errors), sent=self.sent, late=self.late, skipped=self.book.skipped,
            send_errors=self.send_errors,
            callback_drops=self.callback_drops, pending=self.pending(),
            sounding=len(self.sounding()), realtime=self.realtime)

    # --- the thread ---------------------------------------------------------------------------

    def _rebind(self) -> None:
        """The clock changed: the head's time is bound again."""
        with self._cond:
            self._version += 1
            self._cond.notify()

    def _time_of(self, tick: float) -> float:
        """The time to send a message of ``tick``, with the clock's mapping of now."""
        return self.clock.tick_to_time(tick) - self._latency

    def _run(self) -> None:
        if self._want_realtime:
            self.realtime = try_realtime()
        while True:
            with self._cond:
                while True:
                    if self._quit:
                        return
                    head = self.book.next_tick()
                    if head is None:
                        self._cond.wait()
                        continue
                    target = self._time_of(head)
                    delay = target - now()
                    if delay <= self.SPIN:
                        version = self._version
                        break
                    self._cond.wait(delay - self.SPIN)
            # Spin outside the lock so pushes stay cheap; an earlier push or a clock
            # change restarts the wait with the head bound again.
            while now() < target and self._version == version and not self._quit:
                time.sleep(0)
            with self._send_lock:
                with self._cond:
                    t = now()
                    due = self.book.pop_due(self.clock.time_to_tick(t + self._latency) + _HAIR)
                for tick, _, _, msg, tag in due:
                    target = None if tick == ASAP else self._time_of(tick)
                    if target is not None and t - target > self.max_late and is_note_on(msg):
                        self.book.skip(msg, tag)  # a burst of stale notes is worse than none
                    elif self.book.wanted(msg, tag):
                        self._send(msg, tag, target)

    def _send(self, msg: mido.Message, tag: Hashable, target: float | None) -> None:
        """Send one message and keep the books; caller holds _send_lock."""
        t = now()
        try:
            self.output.send(msg)
        except Exception as e:  # a broken output must not kill the thread or lose the books
            self.send_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
        self.sent += 1
        if target is not None:
            self.errors.append(t - target)
            if t - target > LATE:
                self.late += 1
        # A note-on whose send failed may still have sounded: the book keeps it for its off.
        self.book.sent(msg, tag)
        if self._sent_q is not None:
            try:
                self._sent_q.put_nowait((msg, t, tag))
            except queue.Full:
                self.callback_drops += 1

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
    clock = Clock(125.0)  # 20 ms a tick
    sched = Scheduler(_NullOutput(), clock, realtime=realtime)
    t0 = clock.now_tick() + 0.05 / clock.seconds_per_tick
    for i in range(n):
        sched.schedule(mido.Message("clock"), t0 + i * spacing / clock.seconds_per_tick)
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
