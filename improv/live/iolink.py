"""The session's side of the real-time I/O process (:mod:`improv.live.rtio`).

This module owns :class:`IOLink`: it starts the I/O process (spawn context) and then
stands, for the session, where an in-process :class:`~improv.live.scheduler.Scheduler`
and the input port's queue would: the Scheduler contract (``schedule`` / ``cancel`` /
``panic`` / ``heartbeat`` / ``stats`` / ``stop``) goes over the pipe, and ``inbox``
(an :class:`~improv.live.ports.InputQueue`) fills from a reader thread with the
player's messages and the times the port's callback took.

It keeps the two processes' clocks in step: with an internal tempo the session's
changes go to the I/O process (``Clock.on_change``); when following MIDI clock the
follower lives in the I/O process, next to the timestamps, and its mappings come
back here. Messages the I/O process sent come back too (``on_sent(msg, t, tag)``:
the recording). A heartbeat thread tells the I/O process the session lives, as long
as the session's loop calls ``heartbeat()`` (a session thread stuck for
``hang_s`` stops it, and the I/O process's watchdog ends the notes 200 ms later;
``hang_s=None``: it beats while the link lives). The beat comes from a thread of
its own because one model step or a long generation burst may hold the session's
loop for longer than the watchdog's 200 ms without anything being wrong.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Hashable

import mido

from improv.live.clock import Clock
from improv.live.input_queue import InputQueue
from improv.live.ports import PortError
from improv.live.scheduler import SchedulerStats

HEARTBEAT_EVERY = 0.05  # seconds between heartbeats (the watchdog waits 200 ms)


class RemoteFollower:
    """The session's ``follower`` when the MIDI clock follower lives in the I/O process:
    the session still sees transport messages, its clock already follows."""

    def feed_message(self, msg: mido.Message, t: float) -> None:
        pass  # the I/O process fed its follower with this message; the mapping came first


class IOLink:
    """Scheduler and input of a session whose ports live in the I/O process."""

    def __init__(
        self,
        clock: Clock,
        config: dict,
        *,
        on_sent: Callable[[mido.Message, float, Hashable], object] | None = None,
        on_lost: Callable[[], object] | None = None,
        hang_s: float | None = 1.0,
        start_timeout: float = 30.0,
    ) -> None:
        from improv.live import rtio

        self.clock = clock
        self.follow = bool(config.get("follow"))
        self._latency_ms = float(config.get("latency_ms", 0.0) or 0.0)
        self.on_sent = on_sent
        self.on_lost = on_lost
        # (event, name, role): a port 'lost' / 'back' / 'deaf' (reopened), or 'echo'
        self.on_port: Callable[[str, str, str], object] | None = None
        self.hang_s = hang_s
        self.inbox = InputQueue()
        self._stats = SchedulerStats(0, 0, 0, 0, 0, 0, False, None, None, None)
        self._lock = threading.Lock()  # one sender at a time on the pipe
        self._closed = False
        self._bye = threading.Event()
        self.lost = threading.Event()
        self._replies: dict[str, tuple] = {}
        self._reply = threading.Condition()
        self._beat: float | None = None  # the session loop's last heartbeat() (None: not yet)
        config = dict(config, mapping=clock.mapping(), meter=(clock.meter.numerator,
                      clock.meter.denominator), bar_origin=clock.bar_origin)
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=rtio.child_main, args=(child, config),
                                   name="improv-io", daemon=False)
        self.process.start()
        child.close()  # only the I/O process holds that end: our death is its EOF
        if not self._conn.poll(start_timeout):
            self._kill()
            raise PortError("the MIDI I/O process did not start")
        first = self._conn.recv()
        if first[0] != "ready":
            self.process.join(timeout=5)
            raise PortError(first[1] if len(first) > 1 else "the MIDI I/O process failed")
        (_, self.in_name, self.out_name, self.in_virtual, self.out_virtual, self.in_heard,
         self.timing) = first  # timing: JACK's period and what the I/O process makes of it
        self._unsubscribe = (lambda: None) if self.follow else clock.on_change(self._push_mapping)
        self._reader = threading.Thread(target=self._read, name="improv-io-reader", daemon=True)
        self._reader.start()
        self._beater = threading.Thread(target=self._beat_loop, name="improv-io-heart",
                                        daemon=True)
        self._beater.start()

    # --- the Scheduler contract ------------------------------------------------------------

    def schedule(self, msg: mido.Message, tick: float | None, *, tag: Hashable = None) -> None:
        self._send(("s", tick, bytes(msg.bytes()), tag))

    def cancel(self, tag: Hashable = None) -> None:
        self._send(("c", tag))

    def panic(self) -> None:
        self._send(("p",))

    def set_thru_channel(self, channel: int) -> None:
        """Where the I/O process's thru sends the player's notes (0-15): the preset's channel
        (thru off stays off)."""
        self._send(("t", channel))

    def heartbeat(self) -> None:
        self._beat = time.monotonic()

    def stats(self) -> SchedulerStats:
        return self._stats

    @property
    def latency_ms(self) -> float:
        return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self._latency_ms = float(value)
        self._send(("l", self._latency_ms))

    def stop(self, timeout: float = 3.0) -> None:
        """The I/O process ends every note, closes the ports and exits; safe to call twice."""
        if self._closed:
            return
        self._unsubscribe()
        self._send(("q",))
        self._closed = True
        self._bye.wait(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            self._kill()
        self._conn.close()

    close = stop

    def select_port(self, role: str, name: str, timeout: float = 10.0) -> str:
        """Reopen the I/O process's input or output on ``name``; returns the port's name."""
        with self._reply:
            self._replies.pop(role, None)
            self._send(("o", role, name))
            self._reply.wait_for(lambda: role in self._replies or self.lost.is_set(), timeout)
            ok, text = self._replies.pop(role, (False, "the MIDI I/O process did not answer"))
        if not ok:
            raise PortError(text)
        return text

    # --- plumbing ----------------------------------------------------------------------------

    def _send(self, item: tuple) -> None:
        if self._closed or self.lost.is_set():
            return
        try:
            with self._lock:
                self._conn.send(item)
        except (OSError, ValueError):
            self._gone()

    def _push_mapping(self) -> None:
        self._send(("m", *self.clock.mapping()))

    def _beat_loop(self) -> None:
        while not self._closed and not self.lost.is_set():
            beat = self._beat  # before the session's loop runs (model loading), beat anyway
            if self.hang_s is None or beat is None or time.monotonic() - beat < self.hang_s:
                self._send(("h",))
            time.sleep(HEARTBEAT_EVERY)

    def _read(self) -> None:
        while True:
            try:
                item = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = item[0]
            if kind == "i":
                self.inbox.put(item[1], mido.Message.from_bytes(item[2]))
            elif kind == "m":
                self.clock.set_mapping(item[1], item[2], item[3])
            elif kind == "x":
                if self.on_sent is not None:
                    try:
                        self.on_sent(mido.Message.from_bytes(item[2]), item[1], item[3])
                    except Exception:
                        pass  # a recorder's fault must not stop the link
            elif kind == "S":
                self._stats = SchedulerStats(**item[1])
            elif kind == "O":
                with self._reply:
                    self._replies[item[1]] = (item[2], item[3])
                    self._reply.notify_all()
            elif kind == "w":
                if self.on_port is not None:
                    try:
                        self.on_port(item[1], item[2], item[3])
                    except Exception:
                        pass
            elif kind == "bye":
                self._bye.set()
                break
        self._gone()

    def _gone(self) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        self._bye.set()
        with self._reply:
            self._reply.notify_all()
        if not self._closed and self.on_lost is not None:
            self.on_lost()

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)
