"""A pseudo-terminal of a given size, its output drained, for running the stage UI headless.

The UI process needs a terminal to draw on: the tests and the isolation benchmark give it
one of these (80x24 or 160x48) and read what it drew. The drain thread keeps reading so a
full terminal never blocks the program drawing on it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import threading


class Pty:
    """``slave`` is the terminal end to hand to a process; ``out`` is what it wrote."""

    def __init__(self, cols: int, rows: int) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.out = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.out.extend(data)

    def text(self) -> str:
        return bytes(self.out).decode(errors="replace")

    def close_slave(self) -> None:
        """Once the child has the terminal, the parent's copy of its end goes."""
        os.close(self.slave)
