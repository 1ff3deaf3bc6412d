"""The stage UI's modal screens: help (every key) and the question before a set ends.

``HelpScreen`` lists the bindings it is given, the app's own ``BINDINGS``, so it cannot drift
from the keys: each binding's key as the terminal shows it and its description, grouped where
one description covers several keys (``1-9``). ``QuitScreen`` asks y/n before ``q`` ends a set
that is playing; it dismisses with True (end it) or False (play on).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from improv.stage.widgets import key_label


def help_rows(bindings: Sequence[Binding]) -> list[tuple[str, str]]:
    """(keys, what they do) for every binding with a description, keys sharing one joined."""
    rows: dict[str, list[str]] = {}
    for b in bindings:
        if not b.description:
            continue
        keys = rows.setdefault(b.description, [])
        for key in b.key.split(","):
            label = key_label(key.strip())
            if label not in keys:
                keys.append(label)
    return [(" ".join(keys), desc) for desc, keys in rows.items()]


class HelpScreen(ModalScreen[None]):
    """Every key of the stage (F1 or ?); any of escape, q, F1 or ? closes it."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "close")]
    COMPONENT_CLASSES = {"help--key"}

    def __init__(self, bindings: Sequence[Binding]) -> None:
        super().__init__()
        self.rows = help_rows(bindings)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(id="help-keys")
            yield Static("upper case turns a knob up, lower case down · esc closes",
                         id="help-hint")

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "keys"
        key_style = self.get_component_rich_style("help--key", partial=True)
        width = max(len(k) for k, _ in self.rows)
        lines = [Text.assemble((f"{k:>{width}}", key_style), f"  {d}") for k, d in self.rows]
        self.query_one("#help-keys", Static).update(Text("\n").join(lines))


class QuitScreen(ModalScreen[bool]):
    """End the set? y ends it, n or escape plays on."""

    BINDINGS = [Binding("y", "answer(True)", "end the set"),
                Binding("n,escape", "answer(False)", "play on")]

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-box"):
            yield Static("End the set? Every note stops.", id="quit-question")
            yield Static("y end it · n play on", id="quit-hint")

    def action_answer(self, end: bool) -> None:
        self.dismiss(end)


__all__ = ["HelpScreen", "QuitScreen", "help_rows"]
