"""The edges of a set: the jam's own lines, the signals it takes, and a shutdown that cannot hang.

This module owns what ``improv jam`` does when its surroundings fail rather than the music:

- ``Printer``: lines to stdout or stderr written by a thread of their own, straight to the file
  descriptor. A reader that left (EPIPE), a terminal that went away (EIO) or one that stopped
  reading (a stalled SSH link) silences the printer; the set never waits on it and never ends
  because of it.
- ``Signals``: SIGINT, SIGTERM and SIGHUP end the set, installed before anything is built, so a
  signal during start-up ends the start-up cleanly (the recording closed, nothing left behind);
  once the teardown has begun they are ignored, so a second Ctrl-C cannot break a port's close;
  SIGUSR1 asks the session for a panic.
- ``bounded``: one step of the teardown in a thread of its own, waited for a limited time;
  ``Watchdog``: the process ends after a last limit whatever still waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

PRINT_QUEUE = 1000  # lines waiting for a slow terminal; more are dropped, the set goes on


class Printer:
    """Lines to file descriptor ``fd``, written by a daemon thread; ``line`` never blocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dead = False
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._run, name=f"improv-print-{fd}", daemon=True).start()

    def line(self, text: str) -> None:
        with self._lock:
            if self.dead or self._pending >= PRINT_QUEUE:
                self.dropped += not self.dead
                return
            self._pending += 1
            self._idle.clear()
        self._queue.put(text)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the lines so far to be written (or dropped)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            data = (self._queue.get() + "\n").encode("utf-8", "replace")
            try:
                while data:
                    try:
                        data = data[os.write(self.fd, data):]
                    except BlockingIOError:  # a terminal another process made non-blocking
                        select.select([], [self.fd], [], 1.0)
            except OSError:  # EPIPE (the reader left), EIO (the terminal went away)
                self._silence()
                return
            with self._lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    def _silence(self) -> None:
        """Nothing more goes there: later writes by anyone (logging, a C library, the
        interpreter's last flush) land in /dev/null instead of failing."""
        with self._lock:
            self.dead = True
            self._idle.set()
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.fd)
            os.close(devnull)


class PrinterHandler(logging.Handler):
    """Logging through a Printer, so a log line never waits on a terminal either."""

    def __init__(self, printer: Printer) -> None:
        super().__init__()
        self.printer = printer
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.printer.line(self.format(record))


_printers: dict[int, Printer] = {}
_printers_lock = threading.Lock()


def printer(fd: int) -> Printer:
    """The one Printer of ``fd`` (1: stdout, 2: stderr) in this process."""
    with _printers_lock:
        if fd not in _printers:
            for stream in (sys.stdout, sys.stderr):  # what Python buffered goes first
                with contextlib.suppress(Exception):
                    stream.flush()
            _printers[fd] = Printer(fd)
        return _printers[fd]


def out(text: str) -> None:
    """A line on stdout (the headless set's lines)."""
    printer(1).line(text)


def err(text: str) -> None:
    """A line on stderr (the jam's own messages)."""
    printer(2).line(text)


def drain(timeout: float = 0.5) -> None:
    """Give the printers up to ``timeout`` seconds to write what is queued."""
    deadline = time.monotonic() + timeout
    for p in list(_printers.values()):
        p.drain(max(0.0, deadline - time.monotonic()))


def log_to_stderr(level: int = logging.INFO) -> None:
    """The root logger writes through stderr's Printer; an unwritable line is dropped quietly."""
    logging.raiseExceptions = False
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.addHandler(PrinterHandler(printer(2)))
    root.setLevel(level)
    # The session's own lines (call ended, preset, ports...) reach the player once, labelled
    # with the beat: on the headless printer or in the UI's log, not a second time here.
    logging.getLogger("improv.live.session").setLevel(logging.WARNING)


class Signals:
    """The jam's signal handlers (install them from the main thread, before the rig)."""

    ENDS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.session = None  # set once built: SIGUSR1 reaches it
        self.phase = "start"  # start, run, teardown

    def install(self) -> Signals:
        for name in self.ENDS:
            if hasattr(signal, name):
                self._set(getattr(signal, name), self._end)
        if hasattr(signal, "SIGUSR1"):
            self._set(signal.SIGUSR1, self._panic)
        return self

    def _set(self, signum: int, handler) -> None:
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave them be
            signal.signal(signum, handler)

    def running(self, session) -> None:
        self.session = session
        self.phase = "run"

    def tearing_down(self) -> None:
        self.phase = "teardown"

    def exiting(self) -> None:
        """The set is over: a late Ctrl-C is ignored, also while the interpreter finalizes
        (it puts back the default handler of any signal with a Python handler, not SIG_IGN)."""
        self.phase = "teardown"
        self._set(signal.SIGINT, signal.SIG_IGN)

    def _end(self, signum, frame) -> None:
        if self.phase == "teardown":
            return  # the teardown is bounded; a second Ctrl-C must not break a port's close
        if self.phase == "start" and signum == signal.SIGINT and self.stop.is_set():
            raise KeyboardInterrupt  # Ctrl-C twice while starting: stop waiting for it
        self.stop.set()

    def _panic(self, signum, frame) -> None:
        session = self.session
        if session is None or self.phase != "run":
            return
        from improv.live.session_api import Panic

        with contextlib.suppress(Exception):
            session.send(Panic())  # a queue put: the session thread does the panic


def bounded(step: Callable[[], object], timeout: float, what: str) -> bool:
    """Run ``step`` in a thread and wait up to ``timeout``; False (and one line) if it is
    still running then. Its exceptions are swallowed: a teardown goes on whatever fails."""

    def run() -> None:
        with contextlib.suppress(Exception):
            step()

    t = threading.Thread(target=run, name=f"improv-teardown-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        err(f"improv: {what} did not finish within {timeout:g} s; going on without it")
        return False
    return True


class Watchdog:
    """Ends the process ``limit_s`` after ``start()`` unless ``done()`` came first."""

    def __init__(self, limit_s: float, status: int = 1) -> None:
        self.limit_s = limit_s
        self.status = status
        self._done = threading.Event()

    def start(self) -> Watchdog:
        threading.Thread(target=self._run, name="improv-exit-watchdog", daemon=True).start()
        return self

    def done(self) -> None:
        self._done.set()

    def _run(self) -> None:
        if self._done.wait(self.limit_s):
            return
        err(f"improv: the shutdown took over {self.limit_s:g} s; exiting now")
        drain(0.3)
        os._exit(self.status)


__all__ = ["Printer", "Signals", "Watchdog", "bounded", "drain", "err", "log_to_stderr", "out",
           "printer"]
