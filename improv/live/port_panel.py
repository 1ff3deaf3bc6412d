"""The set's MIDI ports as a UI sees them, and picking another one mid-set.

This module owns the port views a snapshot carries and the rule for reopening a
port: on a thread of its own (a driver may block), never on the session thread;
if the new port fails, the old one stays in use and a line says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from improv.live.session_api import PortView


class PortPanel:
    """Port views; ``selector(role, name) -> PortView`` reopens one (None: fixed ports)."""

    def __init__(self, views: tuple[PortView, ...] = (),
                 selector: Callable[[str, str], PortView] | None = None) -> None:
        self.views = tuple(views)
        self.selector = selector

    def set(self, view: PortView) -> None:
        """A port changed (picked, unplugged, back); safe from any thread."""
        if any(v.role == view.role for v in self.views):
            self.views = tuple(view if v.role == view.role else v for v in self.views)
        else:
            self.views += (view,)

    def pick(self, role: str, name: str, say: Callable[[str], object]) -> None:
        """Open ``name`` for ``role`` ("in"/"out") off the caller's thread."""
        if self.selector is None:
            say("ports are fixed in this session")
            return
        threading.Thread(target=self._pick, args=(role, name, say),
                         name="improv-port-select", daemon=True).start()

    def _pick(self, role: str, name: str, say: Callable[[str], object]) -> None:
        try:
            view = self.selector(role, name)
        except Exception as e:  # the old port stays in use
            say(f"could not open the {role}put port {name!r}: {e}")
            return
        self.set(view)
        say(f"{role}put port: {view.name}")
