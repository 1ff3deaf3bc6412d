"""The stage UI for ``improv jam``: a Textual app over a session's snapshots and intents.

The app owns the keys and the layout. It reads ``session.snapshot()`` at a bounded rate
(``POLL_HZ``), puts the snapshot in one reactive that every panel is bound to, pulls log lines
with ``session.drain_log()``, and turns key presses into ``Intent``s sent with the non-blocking
``session.send``. Nothing here waits on the session, and nothing is shown that did not come from a
snapshot (a knob moves on screen when the session says it moved).

While the app runs it owns the terminal, so logging handlers that write to it are held (see
``TerminalLogs``): a line printed there would land on top of the panels.

Panels live in ``widgets``, ``turn`` (whose turn, big) and ``roll``; the help and quit screens
in ``screens``; colours and layout in ``tui.tcss``. The keys are ``BINDINGS``, once: the key
bar and the help screen (F1, ?) are made from them. ``q`` asks before it ends a set.
``python -m improv.stage.tui --demo`` runs the app over a simulated session (``tui_demo``);
``improv ui`` runs it over a jam in another process (``stage.remote``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from collections.abc import Callable, Sequence

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import RichLog

from improv.core.presets import PresetLibrary
from improv.live.session_api import (
    Intent,
    Learn,
    NudgeKnob,
    Panic,
    SelectPreset,
    SessionLike,
    SetClick,
    SetKey,
    SetMode,
    Snapshot,
    Stop,
    TapTempo,
)
from improv.stage.roll import PianoRoll
from improv.stage.screens import HelpScreen, QuitScreen
from improv.stage.turn import BigState
from improv.stage.widgets import (
    KeyBar,
    KnobPanel,
    KnobView,
    LatencyPanel,
    PortsBar,
    PortsScreen,
    PresetList,
    StatusBar,
    mido_ports,
)

POLL_HZ = 25  # snapshot reads per second: smooth scrolling, and a bounded cost to the session
MODES = ("call_response", "overlap")

# (down key, up key, knob, label): lower case turns down, upper case up
KNOB_KEYS = (
    ("t", "T", "temperature", "temp"),
    ("p", "P", "top_p", "top-p"),
    ("d", "D", "density", "density"),
    ("r", "R", "response_bars", "resp"),
    ("b", "B", "call_bars", "trade"),
    ("s", "S", "silence_beats", "silence"),
    ("minus", "plus,equals_sign", "bpm", "tempo"),
)


def _bindings() -> list[Binding]:
    """Every key, each with what it does (the help screen lists them all; the key bar the
    shown ones, one per group)."""
    out = [Binding("1", "preset(1)", "preset", key_display="1-9")]
    out += [Binding(str(n), f"preset({n})", "preset", show=False) for n in range(2, 10)]
    for down, up, knob, label in KNOB_KEYS:
        shown = "-/+" if knob == "bpm" else f"{down}/{up}"
        out.append(Binding(up, f"nudge('{knob}', 1)", label, key_display=shown))
        out.append(Binding(down, f"nudge('{knob}', -1)", label, show=False))
    out += [
        Binding("space", "tap", "tap", key_display="space"),
        Binding("m", "mode", "mode"),
        Binding("k", "key_lock", "key lock"),
        Binding("c", "click", "click"),
        Binding("up", "focus_knob(-1)", "knob", key_display="↑↓←→"),
        Binding("down", "focus_knob(1)", "knob", show=False),
        Binding("right", "turn(1)", "turn the knob", show=False),
        Binding("left", "turn(-1)", "turn the knob", show=False),
        Binding("l", "learn", "learn"),
        Binding("o", "ports", "ports"),
        # panic: escape (and F12), never a preset key's shifted twin; while learning, escape
        # cancels the learning instead (the status line says so)
        Binding("escape,f12", "escape", "panic", key_display="esc"),
        Binding("f1,question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
    ]
    return out


class TerminalLogs(logging.Handler):
    """Holds the logging handlers that write to the terminal while the app draws on it.

    ``improv jam`` logs to stderr (``logging.basicConfig``), and such a handler keeps the real
    stderr, out of reach of Textual's print capture: every session line landed wherever the
    cursor was, over the knobs panel. While held, the session's own lines reach the log pane
    through ``drain_log``; warnings and errors logged anywhere else come here (``drain``),
    from any thread.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=100)
        self.held: list[tuple[logging.Logger, logging.Handler]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)

    def drain(self) -> list[str]:
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        return out

    def hold(self) -> None:
        root = logging.getLogger()
        loggers = [root] + [lg for lg in logging.Logger.manager.loggerDict.values()
                            if isinstance(lg, logging.Logger)]
        self.held = [(lg, h) for lg in loggers for h in lg.handlers if on_terminal(h)]
        for lg, h in self.held:
            lg.removeHandler(h)
        root.addHandler(self)

    def release(self) -> None:
        logging.getLogger().removeHandler(self)
        for lg, h in self.held:
            lg.addHandler(h)
        self.held = []


def on_terminal(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to the terminal (stderr, stdout or any tty), not to a file."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = handler.stream
    if stream is sys.__stderr__ or stream is sys.__stdout__:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed, or not a file at all
        return False


class LogPane(RichLog, can_focus=False):
    """Session log; not focusable so arrow keys always reach the knobs."""


class ImprovApp(App):
    """``ImprovApp(session, presets)``: run it with ``.run()``; it returns when the player quits."""

    CSS_PATH = "tui.tcss"
    TITLE = "improv"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = _bindings()
    # a tall terminal gets the big state in big letters (tui.tcss: Screen.-tall)
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]

    # the panels bound to it decide what to repaint (see SnapshotView.view_key)
    snapshot: reactive[Snapshot] = reactive(Snapshot, repaint=False)

    def __init__(
        self,
        session: SessionLike,
        presets: PresetLibrary | Sequence[str] | None = None,
        list_ports: Callable[[], tuple[list[str], list[str]]] = mido_ports,
        poll_hz: float = POLL_HZ,
        quit_ends_set: bool = True,
    ):
        super().__init__()
        self.session = session
        # q ends the set when this app belongs to the jam (in-process, or the UI `improv jam`
        # started); an app attached with `improv ui` only detaches, and the jam plays on
        self.quit_ends_set = quit_ends_set
        if isinstance(presets, PresetLibrary):
            presets = presets.names()
        self.preset_names: tuple[str, ...] = tuple(presets or ())
        self.list_ports = list_ports
        self.poll_hz = min(float(poll_hz), 30.0)  # faster is wasted: snapshots come at 20 Hz
        self.terminal_logs = TerminalLogs()

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="side"):
                yield KnobPanel(id="knobs").data_bind(ImprovApp.snapshot)
                yield PresetList(self.preset_names, id="presets").data_bind(ImprovApp.snapshot)
                yield LatencyPanel(id="latency").data_bind(ImprovApp.snapshot)
            with Vertical(id="stage"):
                yield StatusBar(id="status").data_bind(ImprovApp.snapshot)
                yield BigState(id="turn").data_bind(ImprovApp.snapshot)
                yield PortsBar(id="ports").data_bind(ImprovApp.snapshot)
                yield PianoRoll(id="roll").data_bind(ImprovApp.snapshot)
                # min_width: RichLog renders every line at least 78 wide, so nothing wrapped in a
                # narrower pane: the tail hid behind a sideways scrollbar that took a row
                yield LogPane(id="log", max_lines=500, wrap=True, markup=False, min_width=1)
        yield KeyBar(self.BINDINGS, id="keys")

    def on_load(self) -> None:
        self.terminal_logs.hold()  # before the driver takes the terminal

    def on_unmount(self) -> None:
        self.terminal_logs.release()

    def on_mount(self) -> None:
        for panel, title in (("#knobs", "knobs"), ("#presets", "presets"),
                             ("#latency", "latency"), ("#log", "log")):
            self.query_one(panel).border_title = title
        self.query(KnobView).first().focus()
        self.poll()  # the first frame already shows the session, not defaults
        self.set_interval(1 / self.poll_hz, self.poll)

    def poll(self) -> None:
        """Take the latest snapshot and log lines; cheap, and never waits on the session."""
        try:
            snap = self.session.snapshot()
            lines = self.session.drain_log()
        except Exception as e:  # a broken session must not take the stage UI down with it
            self.log_line(f"session error: {e}")
            return
        if snap is not self.snapshot:
            self.snapshot = snap
        for line in lines + self.terminal_logs.drain():
            self.log_line(line)
        gone = getattr(self.session, "gone", None)  # a RemoteSession whose jam went away
        if gone is not None:
            self.exit(return_code=0 if getattr(self.session, "ended", False) else 1,
                      message=f"improv: {gone}")

    def log_line(self, line: str) -> None:
        self.query_one(LogPane).write(Text(line))

    def send(self, intent: Intent) -> None:
        try:
            self.session.send(intent)
        except Exception as e:
            self.log_line(f"could not send {intent}: {e}")

    # --- actions (one per key; see BINDINGS) -------------------------------------------------

    def focused_knob(self) -> KnobView | None:
        return self.focused if isinstance(self.focused, KnobView) else None

    def action_preset(self, number: int) -> None:
        names = self.snapshot.presets or self.preset_names
        if names and number > len(names):
            self.log_line(f"no preset {number}: there are {len(names)}")
            return
        self.send(SelectPreset(number))

    def action_nudge(self, knob: str, steps: int) -> None:
        self.send(NudgeKnob(knob, steps))

    def action_turn(self, steps: int) -> None:
        view = self.focused_knob()
        if view is not None:
            self.send(NudgeKnob(view.knob, steps))

    def action_focus_knob(self, delta: int) -> None:
        views = list(self.query(KnobView))
        current = self.focused_knob()
        i = views.index(current) + delta if current in views else 0
        views[i % len(views)].focus()

    def action_tap(self) -> None:
        self.send(TapTempo())

    def action_mode(self) -> None:
        mode = self.snapshot.mode
        nxt = MODES[(MODES.index(mode) + 1) % len(MODES)] if mode in MODES else MODES[0]
        self.send(SetMode(nxt))

    def action_key_lock(self) -> None:
        """auto (follow the call) -> lock to the detected key -> off -> auto."""
        s = self.snapshot
        cycle = ["auto"] + ([s.key_detected] if s.key_detected else []) + ["off"]
        if s.key not in cycle:  # a key set by a preset: the next step is auto
            cycle.insert(0, s.key)
        self.send(SetKey(cycle[(cycle.index(s.key) + 1) % len(cycle)]))

    def action_learn(self) -> None:
        view = self.focused_knob()
        if view is None:
            self.log_line("MIDI learn: pick a knob first (↑/↓), then press l")
            return
        # l again on the knob being learned cancels, as escape does
        self.send(Learn(None if self.snapshot.learning == view.knob else view.knob))

    def action_escape(self) -> None:
        """Panic; while a knob waits for its CC, escape cancels that instead."""
        self.send(Learn(None) if self.snapshot.learning else Panic())

    def action_panic(self) -> None:
        self.send(Panic())

    def action_click(self) -> None:
        self.send(SetClick(not self.snapshot.click))

    def action_ports(self) -> None:
        self.push_screen(PortsScreen(self.snapshot.ports, self.list_ports, self.send))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.BINDINGS))

    async def action_quit(self) -> None:
        """End the set (asked first), or only detach when this UI does not own the set."""
        if not self.quit_ends_set:
            self.exit()
        elif not isinstance(self.screen, QuitScreen):
            self.push_screen(QuitScreen(), self._quit_answered)

    def _quit_answered(self, end: bool | None) -> None:
        if end:
            self.send(Stop())
            self.exit()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m improv.stage.tui",
        description="The improv stage UI. Play with 'improv jam'; "
        "--demo shows the UI over a simulated session (no MIDI, no model).")
    parser.add_argument("--demo", action="store_true", help="run over a simulated session")
    args = parser.parse_args(argv)
    if not args.demo:
        print(f"{parser.prog}: the stage UI runs inside 'improv jam'; "
              "add --demo to try it over a simulated session", file=sys.stderr)
        return 2
    from improv.stage.demo import DemoSession

    session = DemoSession()
    ImprovApp(session, session.names, list_ports=session.list_ports).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
