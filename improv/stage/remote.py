"""A session in another process, seen through its API socket (``improv ui``).

``RemoteSession`` is ``SessionLike``: a reader thread keeps the latest snapshot and the log lines
the jam sends (see ``improv.live.api_server`` for the messages), ``snapshot()`` and
``drain_log()`` only read what it kept, and ``send()`` writes one intent line. When the jam goes
away (it ended, it died, it dropped this client) ``gone`` says why, and the log gets one line
saying so; the app shows it and exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections import deque

from improv.live.api_server import Address
from improv.live.session_api import (
    Intent,
    Snapshot,
    WireError,
    decode_line,
    encode_line,
    intent_to_dict,
    snapshot_from_dict,
)


class JamGone(ConnectionError):
    """The jam is not there (any more)."""


class RemoteSession:
    """``RemoteSession(address)`` connects at once (``JamGone`` if nothing listens there)."""

    def __init__(self, address: Address, timeout: float = 2.0) -> None:
        try:
            self.sock = address.connect(timeout)
        except OSError as e:
            raise JamGone(f"no jam at {address.text} ({e.strerror or e})") from None
        self.address = address
        self.gone: str | None = None  # why the jam is gone; None while attached
        self.ended = False  # the jam said bye (it ended), rather than vanishing
        self.jam_pid: int | None = None
        self._snapshot = Snapshot()
        self._log: deque[str] = deque(maxlen=1000)
        self._first = threading.Event()  # the first snapshot arrived
        self._send_lock = threading.Lock()
        self._write(encode_line({"hello": {"pid": os.getpid(), "token": address.token}}))
        self._reader = threading.Thread(target=self._read, name="improv-remote", daemon=True)
        self._reader.start()

    # --- SessionLike ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def drain_log(self) -> list[str]:
        out = []
        while self._log:
            out.append(self._log.popleft())
        return out

    def send(self, intent: Intent) -> None:
        """One intent line; a jam that is gone makes this a no-op (``gone`` says so)."""
        if self.gone is not None:
            return
        self._write(encode_line({"intent": intent_to_dict(intent)}))

    # --- the rest ------------------------------------------------------------------------------

    def wait_first(self, timeout: float) -> bool:
        """Wait for the first snapshot (for a first frame that shows the jam, not defaults)."""
        return self._first.wait(timeout)

    def close(self) -> None:
        self._lost("detached")
        self._reader.join(timeout=1.0)

    def _write(self, data: bytes) -> None:
        # A blocking write, on the caller's thread: the server reads all the time, so this
        # waits only if the jam hangs, and then the UI is no use anyway.
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as e:
            self._lost(f"the connection to the jam broke ({e.strerror or e})")

    def _read(self) -> None:
        buf = b""
        try:
            while self.gone is None:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._on_message(line)
        except OSError:
            pass
        self._lost("the jam has ended" if self.ended else "the jam went away")

    def _on_message(self, line: bytes) -> None:
        try:
            message = decode_line(line)
            if "snapshot" in message:
                self._snapshot = snapshot_from_dict(message["snapshot"])
                self._first.set()
            elif "log" in message:
                self._log.extend(str(x) for x in message["log"])
            elif "hello" in message:
                pid = message["hello"].get("pid")
                self.jam_pid = pid if isinstance(pid, int) else None
            elif "error" in message:
                self._log.append(f"the jam refused a message: {message['error']}")
            elif "bye" in message:
                self.ended = True
                self._log.append(str(message["bye"]))
        except (WireError, AttributeError) as e:
            self._log.append(f"a bad message from the jam: {e}")

    def _lost(self, why: str) -> None:
        if self.gone is not None:
            return
        self.gone = why
        self._first.set()
        if why != "detached":
            self._log.append(why)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


__all__ = ["JamGone", "RemoteSession"]
