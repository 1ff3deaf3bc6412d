"""The stage UI's panels: status, ports, knobs, presets, latency, key bar and the port picker.

Every panel renders from a ``Snapshot`` bound to the app's ``snapshot`` reactive and never calls
the session; the app (``improv.stage.tui``) owns the keys and sends intents. Colours live in
``tui.tcss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.keys import format_key
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from improv.core import knobs
from improv.live.session_api import Intent, Latency, PortView, SelectPort, Snapshot

# knob name -> label on screen: the knob registry's label, in stage order
KNOB_LABELS = {name: knobs.FIELDS[name].label for name in knobs.LIVE}
MODE_LABELS = {"call_response": "call & response", "overlap": "overlap"}
CLOCK_LABELS = {"internal": "int", "midi": "midi in"}


def format_knob(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    if name == "density":
        return f"{value:+.2f}"
    if name == "response_bars":
        return "call" if value <= 0 else f"{value:.0f}"  # 0: as long as the call
    if name == "call_bars":
        return "off" if value <= 0 else f"{value:.0f}"  # 0: the call ends when the player does
    if name == "bpm":
        return f"{value:.0f}"
    return f"{value:.2f}"


_KEY_LABELS = {"minus": "-", "plus": "+", "f1": "F1", "f12": "F12"}


def key_label(key: str) -> str:
    """A key as the stage shows it: ``question_mark`` -> ``?``, ``escape`` -> ``esc``."""
    return _KEY_LABELS.get(key, format_key(key))


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _share(total: int, wants: list[int]) -> list[int]:
    """Split ``total`` columns between items wanting ``wants``; short ones give theirs away."""
    rooms = [0] * len(wants)
    left = sorted(range(len(wants)), key=lambda i: wants[i])
    while left:
        fair = total // len(left)
        i = left.pop(0)
        rooms[i] = min(wants[i], fair)
        total -= rooms[i]
    return rooms


class SnapshotView(Widget):
    """A panel drawn from the latest snapshot (bound with ``data_bind``).

    It repaints only when ``view_key`` changes: the snapshot changes every poll while playing,
    but most panels do not, and every repaint costs the live path GIL time.
    """

    snapshot: reactive[Snapshot] = reactive(Snapshot, repaint=False)

    def view_key(self, s: Snapshot) -> object:
        return s

    def watch_snapshot(self, old: Snapshot, new: Snapshot) -> None:
        if self.view_key(old) != self.view_key(new):
            self.refresh()


class StatusBar(SnapshotView):
    """Tempo, meter, position, clock source and click; mode, key lock and recording. (Whose
    turn it is, the big state panel says: ``improv.stage.turn``.)"""

    COMPONENT_CLASSES = {"status--dim", "status--learn", "status--click"}

    def view_key(self, s: Snapshot) -> object:
        return (s.bpm, s.meter, s.clock_source, int(s.beat), s.learning, s.mode, s.key,
                s.key_detected, s.recording, s.click)

    def render(self) -> Text:
        s = self.snapshot
        bar, beat = divmod(max(0.0, s.beat), max(1, s.meter[0]))  # beats of the meter's unit
        dim = self.get_component_rich_style("status--dim", partial=True)
        line1 = Text.assemble(
            f" {s.bpm:.0f} bpm {s.meter[0]}/{s.meter[1]}  bar {int(bar) + 1}.{int(beat) + 1}  ",
            ("clock ", dim), CLOCK_LABELS.get(s.clock_source, s.clock_source),
        )
        if s.click:
            line1.append("  ♩ click", self.get_component_rich_style("status--click",
                                                                     partial=True))
        if s.learning:
            learn = self.get_component_rich_style("status--learn", partial=True)
            label = KNOB_LABELS.get(s.learning, s.learning)
            line2 = Text(f" learn {label}: turn a control · esc cancels", learn)
        else:
            if s.key == "auto":
                key = f"auto → {s.key_detected}" if s.key_detected else "auto"
            else:
                key = s.key
            line2 = Text.assemble(
                (" mode ", dim), MODE_LABELS.get(s.mode, s.mode), ("  key ", dim), key)
            if s.recording:
                line2.append("  ● rec", "bold red")
        return Text("\n", no_wrap=True, overflow="ellipsis").join([line1, line2])


class PortsBar(SnapshotView):
    COMPONENT_CLASSES = {"ports--on", "ports--off", "ports--dim"}

    def view_key(self, s: Snapshot) -> object:
        return s.ports

    def render(self) -> Text:
        ports = self.snapshot.ports or (PortView("in", None, False), PortView("out", None, False))
        on = self.get_component_rich_style("ports--on", partial=True)
        off = self.get_component_rich_style("ports--off", partial=True)
        dim = self.get_component_rich_style("ports--dim", partial=True)
        total = max(0, self.content_size.width - 1 - 2 * (len(ports) - 1)
                    - sum(len(p.role) + 3 for p in ports))
        labels = [(p.name or "none", " (virtual)" if p.virtual else "") for p in ports]
        if sum(len(n) + len(x) for n, x in labels) > total:
            # keep names readable; the ports screen (o) says it in full
            labels = [(n, " (v)" if x else "") for n, x in labels]
        rooms = _share(total, [len(n) + len(x) for n, x in labels])
        out = Text(" ", no_wrap=True, overflow="ellipsis")
        for i, (p, (name, suffix), room) in enumerate(zip(ports, labels, rooms, strict=True)):
            if i:
                out.append("  ")
            out.append(f"{p.role} ", dim)
            out.append("● " if p.connected else "○ ", on if p.connected else off)
            out.append(_clip(name, max(4, room - len(suffix))), None if p.connected else off)
            out.append(suffix, dim)
        return out


class KnobView(Widget, can_focus=True):
    """One knob: label, value, a bar over its range, its CC; focus it and press l to learn."""

    COMPONENT_CLASSES = {"knob--bar", "knob--rest", "knob--cc", "knob--learn"}
    value: reactive[float | None] = reactive(None)
    cc: reactive[int | None] = reactive(None)
    learning: reactive[bool] = reactive(False)

    def __init__(self, knob: str, **kwargs):
        super().__init__(**kwargs)
        self.knob = knob

    def render(self) -> Text:
        lo, hi = knobs.FIELDS[self.knob].lo, knobs.FIELDS[self.knob].hi
        width = self.content_size.width
        head = f"{KNOB_LABELS[self.knob]:<9} {format_knob(self.knob, self.value):>6} "
        if self.learning:
            tail = Text(_clip("learn…", max(0, width - len(head))),
                        self.get_component_rich_style("knob--learn", partial=True))
            return Text(head) + tail
        cc = f" cc{self.cc}" if self.cc is not None else ""
        bar_w = max(0, width - len(head) - 6)
        frac = 0.0 if self.value is None else min(1.0, max(0.0, (self.value - lo) / (hi - lo)))
        filled = round(frac * bar_w)
        return Text.assemble(
            head,
            ("▰" * filled, self.get_component_rich_style("knob--bar", partial=True)),
            ("▱" * (bar_w - filled), self.get_component_rich_style("knob--rest", partial=True)),
            (f"{cc:<6}", self.get_component_rich_style("knob--cc", partial=True)),
        )


class KnobPanel(Vertical):
    snapshot: reactive[Snapshot] = reactive(Snapshot, repaint=False)  # the knobs repaint

    def compose(self) -> ComposeResult:
        for name in knobs.LIVE:
            yield KnobView(name, id=f"knob-{name}")

    def watch_snapshot(self, s: Snapshot) -> None:
        for view in self.query(KnobView):
            view.value = s.knobs.get(view.knob)
            view.cc = s.bindings.get(view.knob)
            view.learning = s.learning == view.knob


class PresetList(SnapshotView):
    """Presets 1..9 (the number keys); the current one marked."""

    COMPONENT_CLASSES = {"presets--current", "presets--dim"}

    def view_key(self, s: Snapshot) -> object:
        return (s.presets, s.preset, s.preset_number)

    def __init__(self, names: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.names = tuple(names)

    def render(self) -> Text:
        s = self.snapshot
        names = s.presets or self.names
        current = self.get_component_rich_style("presets--current", partial=True)
        dim = self.get_component_rich_style("presets--dim", partial=True)
        lines = []
        for i, name in enumerate(names[:9], start=1):
            is_current = i == s.preset_number or (not s.preset_number and name == s.preset)
            text = f"{'▶' if is_current else ' '}{i} {name}"
            lines.append(Text(_clip(text, self.content_size.width or 40),
                              current if is_current else None))
        if len(names) > 9:
            lines.append(Text(f"  +{len(names) - 9} more (by name)", dim))
        if not names:
            lines.append(Text("  no presets", dim))
        return Text("\n").join(lines)


class LatencyPanel(SnapshotView):
    COMPONENT_CLASSES = {"latency--bad", "latency--dim"}

    def view_key(self, s: Snapshot) -> object:
        return s.latency

    def render(self) -> Text:
        lat: Latency = self.snapshot.latency
        dim = self.get_component_rich_style("latency--dim", partial=True)
        bad = self.get_component_rich_style("latency--bad", partial=True)
        tps = "–" if lat.tokens_per_s is None else f"{lat.tokens_per_s:.0f}"
        return Text("\n").join([
            Text.assemble(("decode ", dim), f"{_ms(lat.decode_median_ms)} med "
                          f"{_ms(lat.decode_p99_ms)} p99", (" ms", dim)),
            Text.assemble(("sched  ", dim), f"{_ms(lat.schedule_p99_ms)} p99", (" ms", dim)),
            Text.assemble(("speed  ", dim), tps, (" tok/s", dim),
                          (f" on {lat.provider}", dim) if lat.provider else ""),
            Text.assemble(("late ", dim), (str(lat.late), bad if lat.late else None),
                          ("  dropped ", dim), (str(lat.dropped), bad if lat.dropped else None)),
        ])


class KeyBar(Widget):
    """Every shown binding as ``key description``, wrapped onto as many lines as the width needs.

    Textual's Footer keeps to one line and scrolls sideways, which hides keys at 80 columns.
    """

    COMPONENT_CLASSES = {"keybar--key"}

    def __init__(self, bindings: Sequence[Binding], **kwargs):
        super().__init__(**kwargs)
        self.items = [(b.key_display or b.key, b.description) for b in bindings if b.show]

    def _lines(self, width: int) -> list[list[tuple[str, str]]]:
        lines: list[list[tuple[str, str]]] = [[]]
        used = 0
        for key, desc in self.items:
            w = len(key) + len(desc) + 2  # " key desc"
            if lines[-1] and used + w > width:
                lines.append([])
                used = 0
            lines[-1].append((key, desc))
            used += w
        return lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Text:
        key_style = self.get_component_rich_style("keybar--key", partial=True)
        rows = []
        for line in self._lines(self.content_size.width):
            row = Text()
            for key, desc in line:
                row.append(" ")
                row.append(key, key_style)
                row.append(f" {desc}")
            rows.append(row)
        return Text("\n").join(rows)


class PortsScreen(ModalScreen[None]):
    """Pick the MIDI input and output: two lists of the ports mido can see, the ones in use marked.

    Enter sends ``SelectPort(role, name)`` through ``send`` and closes the screen; the session
    reopens the port off its own thread, the ports bar shows the outcome and the log any failure.
    The marks follow the app's snapshot while the screen is open (a port unplugged, say).
    """

    BINDINGS = [Binding("escape,o,q", "dismiss", "close")]
    COMPONENT_CLASSES = {"ports--on", "ports--off", "ports--dim"}
    ROLES = (("in", "inputs"), ("out", "outputs"))
    HINT = "↑↓ move · tab inputs/outputs · enter use port · esc close"

    def __init__(self, ports: tuple[PortView, ...],
                 list_ports: Callable[[], tuple[list[str], list[str]]],
                 send: Callable[[Intent], None]):
        super().__init__()
        self.ports = ports
        self.list_ports = list_ports
        self.send = send
        self.found: dict[str, list[str]] | None = None  # role -> names, once the scan is back
        # role -> the name behind each option (None: shown, not pickable)
        self.choices: dict[str, list[str | None]] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="ports-box"):
            yield Static("looking for MIDI ports…", id="ports-status")
            for role, _ in self.ROLES:
                yield OptionList(id=f"ports-{role}")
            yield Static(self.HINT, id="ports-hint")

    def on_mount(self) -> None:
        self.query_one("#ports-box").border_title = "MIDI ports"
        for role, title in self.ROLES:
            self.query_one(f"#ports-{role}").border_title = title
        self.query_one("#ports-in").focus()
        self.watch(self.app, "snapshot", self._follow, init=False)
        # the backend may be slow to enumerate (or hang on a broken driver): never on the UI thread
        self.run_worker(self._scan, thread=True, exclusive=True)

    def _scan(self) -> None:
        try:
            inputs, outputs = self.list_ports()
            found, error = {"in": list(inputs or []), "out": list(outputs or [])}, None
        except Exception as e:  # a missing backend is a message, not a crash
            found, error = None, f"cannot list MIDI ports: {e}"
        try:
            self.app.call_from_thread(self._show, found, error)
        except RuntimeError:  # the app closed while we were scanning
            pass

    def _show(self, found: dict[str, list[str]] | None, error: str | None) -> None:
        if not self.is_attached:  # closed before the scan came back
            return
        status = self.query_one("#ports-status", Static)
        if error is not None:
            status.update(Text(error))
            return
        status.display = False
        self.found = found
        self._fill(first=True)

    def _follow(self, snapshot: Snapshot) -> None:
        if snapshot.ports != self.ports:
            self.ports = snapshot.ports
            if self.found is not None:
                self._fill(first=False)

    def _fill(self, first: bool) -> None:
        """(Re)build both lists from the scan and the ports in use, keeping the cursor."""
        assert self.found is not None
        used = {p.role: p for p in self.ports}
        for role, _ in self.ROLES:
            names = self.found[role]
            p = used.get(role)
            choices: list[str | None] = list(names)
            options = [Option(self._label(name, p if p and p.name == name else None))
                       for name in names]
            if p is not None and p.name and p.name not in names:
                # a virtual port of our own, or one the backend no longer lists: shown, not picked
                choices.insert(0, None)
                options.insert(0, Option(self._label(p.name, p), disabled=True))
            if not names:
                choices.append(None)
                options.append(Option(Text("  none found"), disabled=True))
            view = self.query_one(f"#ports-{role}", OptionList)
            keep = view.highlighted
            self.choices[role] = choices
            view.set_options(options)
            if first or keep is None:  # start on the port in use, else the first pickable one
                current = p.name if p else None
                pickable = [i for i, n in enumerate(choices) if n is not None]
                keep = next((i for i in pickable if choices[i] == current),
                            pickable[0] if pickable else None)
            view.highlighted = keep if keep is not None and keep < len(choices) else None

    def _label(self, name: str, p: PortView | None) -> Text:
        if p is None:
            return Text(f"  {name}")
        on, off, dim = (self.get_component_rich_style(f"ports--{c}", partial=True)
                        for c in ("on", "off", "dim"))
        label = Text()
        label.append("● " if p.connected else "○ ", on if p.connected else off)
        label.append(name)
        label.append(" (virtual)" if p.virtual else "", dim)
        label.append("  in use" if p.connected else "  in use, unplugged", dim)
        return label

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        role = (event.option_list.id or "").removeprefix("ports-")
        choices = self.choices.get(role, [])
        name = choices[event.option_index] if event.option_index < len(choices) else None
        if name is None:
            return
        self.send(SelectPort(role, name))
        self.dismiss()


def mido_ports() -> tuple[list[str], list[str]]:
    import mido  # only when the screen opens: keeps rtmidi out of app start-up

    return list(mido.get_input_names()), list(mido.get_output_names())
