"""The stage UI of ``improv jam`` in its own process, and the jam's API server it talks to.

``improv jam`` serves its session on a local socket (``improv.live.api_server``) whether a UI
runs or not, so ``improv ui`` can attach from another terminal. By default it also starts one
UI itself: a child process running ``improv ui --owner`` on that socket, which owns the
terminal while it runs; the jam's process then writes nothing there (its log lines reach the UI
through the socket). Quitting that UI (q) ends the set.

If the UI dies (killed, crashed) or hangs (stops reading, and the server drops it), the set
plays on: the jam kills what is left of it, gives the terminal back in a sane state, says one
line on stderr and goes on headless. Nothing here is on the timing path: the session, the
scheduler and the ports never wait for the UI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

from improv.commands import teardown
from improv.live.api_server import ApiServer

# leave the alternate screen, show the cursor, stop mouse reports and bracketed paste: what a
# killed Textual app leaves switched on
RESET_TERMINAL = ("\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l"
                  "\x1b[?2004l\x1b[0m")
BYE_WAIT = 3.0  # seconds a UI gets to go after the jam said bye, before it is ended
KILL_WAIT = 2.0  # seconds to reap a UI after SIGKILL (one stuck in the kernel is left behind)


def start_api_server(session, socket_path: str | None = None) -> ApiServer | None:
    """The session on its socket; on failure one line, and the set plays without it."""
    try:
        return ApiServer(session, socket_path).start()
    except OSError as e:
        teardown.err(f"improv: no UI socket ({e}); 'improv ui' cannot attach to this jam")
        return None


def ui_command(server: ApiServer, backend: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "improv", "ui", "--owner", "--socket", server.address.text]
    return cmd + (["--backend", backend] if backend else [])


class TerminalHold(logging.Handler):
    """While the UI owns the terminal, nothing of the jam's process may write there: logging
    handlers that write to it are taken off (warnings and errors go to the UI's log pane,
    through the server), and after ``redirect()`` whatever still writes to file descriptors 1
    and 2 (a print, a C library: JACK, rtmidi) goes to the UI's log pane too, line by line."""

    def __init__(self, server: ApiServer) -> None:
        super().__init__(logging.WARNING)
        self.server = server
        self.held: list[logging.Handler] = []
        self.saved_fds: list[tuple[int, int]] = []
        self.saved_streams: tuple | None = None

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.server.say(f"{record.levelname.lower()}: {record.getMessage()}")

    def __enter__(self) -> TerminalHold:
        root = logging.getLogger()
        self.held = [h for h in root.handlers if isinstance(h, teardown.PrinterHandler) or (
            isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler))]
        for h in self.held:
            root.removeHandler(h)
        root.addHandler(self)
        return self

    def redirect(self) -> None:
        """Fds 1 and 2 into a pipe read by a thread (call it once the UI has the terminal)."""
        if os.name == "nt":
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        r, w = os.pipe()
        for fd in (1, 2):
            self.saved_fds.append((fd, os.dup(fd)))
            os.dup2(w, fd)
        # Python's own streams too, whatever they were replaced by (they may not write to 1, 2)
        self.saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = open(w, "w", buffering=1, errors="replace")  # noqa: SIM115
        threading.Thread(target=self._forward, args=(r,), name="improv-stdio", daemon=True).start()

    def _forward(self, r: int) -> None:
        # This thread must outlive any fault of the server's: if it stopped reading, the pipe
        # would fill and every print (and every thread logging) would wait on it for ever.
        buf = b""
        with contextlib.suppress(OSError):
            while data := os.read(r, 65536):
                *lines, buf = (buf + data).split(b"\n")
                for line in lines:
                    if line.strip():
                        with contextlib.suppress(Exception):
                            self.server.say(line.decode(errors="replace").rstrip())
        os.close(r)

    def __exit__(self, *_) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if self.saved_streams is not None:
            ours = sys.stdout
            sys.stdout, sys.stderr = self.saved_streams
            self.saved_streams = None
            with contextlib.suppress(Exception):
                ours.close()
        for fd, saved in self.saved_fds:
            os.dup2(saved, fd)
            os.close(saved)
        self.saved_fds = []
        root = logging.getLogger()
        root.removeHandler(self)
        for h in self.held:
            root.addHandler(h)


def _save_terminal():
    try:
        import termios

        fd = sys.stdin.fileno()
        return fd, termios.tcgetattr(fd)
    except Exception:  # no tty, or no termios (Windows)
        return None


def _restore_terminal(saved) -> None:
    """After a UI that did not clean up (SIGKILL): cooked mode, main screen, a cursor."""
    if saved is not None:
        import termios

        with contextlib.suppress(Exception):  # TCSANOW: a terminal that stopped reading
            termios.tcsetattr(saved[0], termios.TCSANOW, saved[1])  # must not hold us
    with contextlib.suppress(Exception):
        if os.isatty(2):  # stderr's printer: before the line saying the UI was lost
            teardown.err(RESET_TERMINAL)


def run_with_ui(session, server: ApiServer, backend: str | None, seconds: float | None,
                stop: threading.Event) -> str | None:
    """Run the UI process until the set ends; return why the UI was lost (the set plays on)
    or None when the set is over (the player quit, the time is up, a signal, the session
    ended)."""
    t_end = None if seconds is None else time.monotonic() + seconds
    saved = _save_terminal()
    hangup = _HangupWatch(0)
    lost = None
    child = None
    try:
        with TerminalHold(server) as hold:
            try:
                child = subprocess.Popen(ui_command(server, backend))  # the terminal is its now
            except OSError as e:
                teardown.err(f"improv: could not start the stage UI ({e}); playing headless")
                return "could not start"
            hold.redirect()
            try:
                while True:
                    if hangup.seen():  # the terminal is gone (a killed tmux, a dropped link)
                        stop.set()  # as a SIGHUP would: the set ends
                        _end(child)  # nothing left to draw on; no bye to wait for
                        break
                    rc = child.poll()
                    if rc is not None:
                        if rc != 0:
                            lost = (f"was killed ({signal.Signals(-rc).name})" if rc < 0
                                    else f"failed (exit status {rc})")
                        break
                    if stop.is_set() or not session.running or (
                            t_end is not None and time.monotonic() >= t_end):
                        break
                    if any(pid == child.pid for pid, _ in list(server.dropped)):
                        lost = "stopped answering and was ended"
                        _end(child)
                        break
                    stop.wait(0.05)
            finally:
                if child.poll() is None:  # the set is over: say bye, and it goes by itself
                    teardown.bounded(server.close, 2.0, "the UI socket")
                    try:
                        child.wait(BYE_WAIT)
                    except subprocess.TimeoutExpired:
                        _end(child)
                        lost = lost or "did not go"
    finally:  # also on Ctrl-C: a UI that died in raw mode must not leave the terminal so
        if child is not None and child.returncode != 0:
            _restore_terminal(saved)
    if lost is not None and session.running and not stop.is_set():
        teardown.err(f"improv: the stage UI {lost}; the set plays on without it "
                     f"(Ctrl-C ends it; 'improv ui' attaches a new UI)")
        return lost
    return None


class _HangupWatch:
    """Whether the terminal on ``fd`` hung up. A process without a controlling terminal (a
    session of its own, a pty handed to it) gets no SIGHUP when its terminal goes away; the
    terminal then reports a hangup on poll."""

    def __init__(self, fd: int) -> None:
        self.poller = None
        if hasattr(select, "poll"):
            with contextlib.suppress(OSError, ValueError):
                poller = select.poll()
                poller.register(fd, 0)  # POLLHUP, POLLERR and POLLNVAL come unasked
                self.poller = poller

    def seen(self) -> bool:
        if self.poller is None:
            return False
        try:
            events = self.poller.poll(0)
        except OSError:
            return False
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)


def _end(child: subprocess.Popen) -> None:
    child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(KILL_WAIT)


def headless_seconds(seconds: float | None, started: float) -> float | None:
    """What is left of --seconds after the UI part of the set."""
    return None if seconds is None else max(0.0, seconds - (time.monotonic() - started))


def terminal_ok() -> bool:
    """Whether there is a terminal for a UI (a pipe or a file gets headless lines instead)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


__all__ = ["run_with_ui", "start_api_server", "terminal_ok"]
