"""The session's API on a local socket, for a UI in another process (``improv ui``).

Runs in the session's process next to anything ``SessionLike``: one thread that accepts
clients, sends each the latest snapshot at a bounded rate (``RATE_HZ``) and the session's log
lines, and passes the intents they send to ``session.send``. Messages are JSON lines (see the
codec in ``session_api``):

    server -> client   {"hello": {"version": 1, "pid": N}}    once, first
                       {"snapshot": {...}}                     at most RATE_HZ a second
                       {"log": ["line", ...]}                  as the session says things
                       {"error": "..."}                        a line of the client's refused
                       {"bye": "why"}                          the jam is ending
    client -> server   {"hello": {"pid": N, "token": "..."}}   token: TCP only
                       {"intent": {"kind": "SetKnob", ...}}

It never makes the session wait: it only reads ``snapshot()`` (a reference), pops the log and
puts intents on the session's queue. Sockets are non-blocking, and each client has a bounded
buffer: a client that stops reading (hung, suspended, on a dead SSH link) is dropped once its
buffer is full, and costs the others and the session nothing but the copy into that buffer.

Where: a Unix domain socket (0600, in a 0700 per-user folder, ``runtime_dir()``) on POSIX;
localhost TCP with a random token on Windows. The address goes into ``jam-PID.json`` in the
runtime folder, so ``improv ui`` finds the running jam (``find_jam``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from improv.core import paths
from improv.core.knobs import LIVE as LIVE_KNOBS
from improv.live.session_api import (
    NudgeKnob,
    SessionLike,
    SetKnob,
    WireError,
    decode_line,
    encode_line,
    intent_from_dict,
    snapshot_to_dict,
)

log = logging.getLogger("improv.live.api_server")

VERSION = 1
RATE_HZ = 20.0  # snapshots a second to each client: smooth enough, and a bounded cost
MAX_BUFFER = 1 << 20  # bytes queued for one client (~10 s of snapshots); beyond: dropped
MAX_LINE = 1 << 16  # a client's line longer than this is not a message: dropped
BACKLOG = 100  # log lines a newly attached client gets, so it sees what just happened
USE_TCP = os.name == "nt"


def runtime_dir() -> Path:
    """Per-user folder for sockets and address files (0700): see improv.core.paths."""
    return paths.runtime_dir()


@dataclass(frozen=True)
class Address:
    """Where a jam listens: ``unix:/path/jam-1.sock`` or ``tcp:127.0.0.1:5123``."""

    text: str
    pid: int | None = None
    token: str | None = None  # TCP only: the file's owner can read it, other users cannot

    def connect(self, timeout: float = 2.0) -> socket.socket:
        kind, _, rest = self.text.partition(":")
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = rest
        elif kind == "tcp":
            host, _, port = rest.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, int(port))
        else:
            raise OSError(f"not an improv address: {self.text!r}")
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    @classmethod
    def from_socket_path(cls, path: str | Path) -> Address:
        text = str(path)
        return cls(text if text.startswith(("unix:", "tcp:")) else f"unix:{text}")


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: the connect will tell
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def find_jam(folder: Path | None = None) -> Address | None:
    """The newest running jam's address (its ``jam-PID.json``); stale files are removed."""
    folder = folder or runtime_dir()
    found = []
    for path in folder.glob("jam-*.json"):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
            address = Address(str(data["address"]), pid, data.get("token"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        found.append((path.stat().st_mtime, address))
    return max(found, key=lambda x: x[0])[1] if found else None


class LogTap:
    """A copy of every log line the server drains, for a local reader (the headless printer)."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=1000)

    def drain(self) -> list[str]:
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        return out


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        self.inbuf = bytearray()
        self.pid: int | None = None
        self.authorized = not USE_TCP
        self.writing = False


class ApiServer:
    """``ApiServer(session).start()`` ... ``close()``; see the module docstring."""

    def __init__(self, session: SessionLike, path: str | Path | None = None,
                 rate_hz: float = RATE_HZ, max_buffer: int = MAX_BUFFER) -> None:
        self.session = session
        self.path = Path(path) if path is not None else None
        self.period = 1.0 / rate_hz
        self.max_buffer = max_buffer
        self.address: Address | None = None
        self.dropped: deque[tuple[int | None, str]] = deque(maxlen=100)  # (client pid, why)
        self._backlog: deque[str] = deque(maxlen=BACKLOG)
        self._taps: list[LogTap] = []
        self._clients: dict[int, _Client] = {}  # fileno -> client
        self._lock = threading.Lock()  # the client table; never held across a blocking call
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._last_snap: object = None
        self._last_line = b""
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._address_file: Path | None = None

    # --- life ----------------------------------------------------------------------------------

    def start(self, thread: bool = True) -> ApiServer:
        """Listen, write the address file, and serve from a daemon thread."""
        folder = runtime_dir()
        if USE_TCP:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            token = secrets.token_hex(16)
            self.address = Address(f"tcp:127.0.0.1:{sock.getsockname()[1]}", os.getpid(), token)
        else:
            path = self.path or folder / f"jam-{os.getpid()}.sock"
            self._claim(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, 0o600)  # the folder is 0700 already; this holds when it is not
            self.path = path
            self.address = Address(f"unix:{path}", os.getpid())
        sock.listen(8)
        sock.setblocking(False)
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, "accept")
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._write_address_file(folder)
        if thread:
            self._thread = threading.Thread(target=self._serve, name="improv-api", daemon=True)
            self._thread.start()
        return self

    def _claim(self, path: Path) -> None:
        """A socket file left by a jam that died is removed; a live one is an error."""
        if not path.exists():
            return
        try:
            Address.from_socket_path(path).connect(timeout=0.5).close()
        except OSError:
            path.unlink()
            return
        raise OSError(f"a jam is already listening on {path}")

    def _write_address_file(self, folder: Path) -> None:
        data = {"address": self.address.text, "pid": os.getpid(), "token": self.address.token}
        path = folder / f"jam-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
        self._address_file = path

    def close(self, reason: str = "the jam has ended") -> None:
        """Say bye to every client (as far as their sockets take it now), then hang up."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._lock:
            bye = encode_line({"bye": reason})
            for client in list(self._clients.values()):
                if len(client.out) + len(bye) <= self.max_buffer:
                    client.out += bye
                self._flush(client)
                self._drop(client, None)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        with contextlib.suppress(OSError):
            self._selector.close()
        for path in (self.path if self.address and self.address.text.startswith("unix:")
                     else None, self._address_file):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *_) -> None:
        self.close()

    # --- what the jam asks ---------------------------------------------------------------------

    def tap(self) -> LogTap:
        """Every log line from now on, also for a local reader (the server drains the session)."""
        tap = LogTap()
        self._taps.append(tap)
        return tap

    def client_pids(self) -> list[int | None]:
        with self._lock:
            return [c.pid for c in self._clients.values()]

    def say(self, line: str) -> None:
        """A line for the clients' log panes from the jam itself (not the session)."""
        self._on_lines([line])

    # --- the thread ----------------------------------------------------------------------------

    def _serve(self) -> None:
        next_publish = time.monotonic()
        while not self._closed.is_set():
            try:
                events = self._selector.select(max(0.0, next_publish - time.monotonic()))
            except (OSError, ValueError):  # closed under us
                return
            with self._lock:
                for key, mask in events:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        client = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(client)
                        if mask & selectors.EVENT_WRITE and client.sock.fileno() in self._clients:
                            self._flush(client)
            now = time.monotonic()
            if now >= next_publish:
                try:
                    self.publish()
                except Exception:  # a bad snapshot must not end the server (nor the jam)
                    log.exception("could not publish a snapshot")
                next_publish = max(next_publish + self.period, now)

    def publish(self) -> None:
        """One round: new log lines and the latest snapshot to every client, never waiting."""
        lines = self.session.drain_log()
        if lines:
            self._on_lines(lines)
        if not self._clients:
            return
        snap = self.session.snapshot()
        if snap is self._last_snap:
            return
        self._last_line = encode_line({"snapshot": snapshot_to_dict(snap)})
        self._last_snap = snap
        with self._lock:
            for client in list(self._clients.values()):
                self._queue(client, self._last_line)

    def _on_lines(self, lines: list[str]) -> None:
        self._backlog.extend(lines)
        for tap in self._taps:
            tap.lines.extend(lines)
        data = encode_line({"log": lines})
        with self._lock:
            for client in list(self._clients.values()):
                self._queue(client, data)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        self._clients[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_READ, client)
        hello = encode_line({"hello": {"version": VERSION, "pid": os.getpid()}})
        if self._backlog:
            hello += encode_line({"log": list(self._backlog)})
        if self._last_snap is not None:
            hello += self._last_line
        self._queue(client, hello)

    def _queue(self, client: _Client, data: bytes) -> None:
        if len(client.out) + len(data) > self.max_buffer:
            self._drop(client, "stopped reading")
            return
        client.out += data
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.out:
            try:
                sent = client.sock.send(client.out)
                del client.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(client, "gone")
                return
        want = bool(client.out)
        if want != client.writing and client.sock.fileno() in self._clients:
            client.writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._selector.modify(client.sock, events, client)

    def _drop(self, client: _Client, why: str | None) -> None:
        fileno = client.sock.fileno()
        if self._clients.pop(fileno, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()
        if why is not None:
            self.dropped.append((client.pid, why))
            log.debug("api client %s dropped: %s", client.pid, why)

    def _read(self, client: _Client) -> None:
        if client.sock.fileno() not in self._clients:  # dropped earlier in this round
            return
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client, "hung up")
            return
        client.inbuf += data
        while b"\n" in client.inbuf and client.sock.fileno() in self._clients:
            line, _, rest = bytes(client.inbuf).partition(b"\n")
            client.inbuf = bytearray(rest)
            self._on_message(client, line)
        if len(client.inbuf) > MAX_LINE:
            self._drop(client, "sent a line too long")

    def _on_message(self, client: _Client, line: bytes) -> None:
        try:
            message = decode_line(line)
            if "hello" in message:
                hello = message["hello"] if isinstance(message["hello"], dict) else {}
                pid = hello.get("pid")
                client.pid = pid if isinstance(pid, int) else None
                if USE_TCP:
                    client.authorized = secrets.compare_digest(
                        str(hello.get("token", "")), self.address.token or "")
            elif "intent" in message:
                if not client.authorized:
                    self._drop(client, "no token")
                    return
                intent = intent_from_dict(message["intent"])
                if isinstance(intent, SetKnob | NudgeKnob) and intent.name not in LIVE_KNOBS:
                    raise WireError(f"no knob {intent.name!r}")
                self.session.send(intent)
        except WireError as e:
            self._queue(client, encode_line({"error": str(e)}))


__all__ = ["Address", "ApiServer", "LogTap", "find_jam", "runtime_dir"]
