"""A simulated session for trying the stage UI without MIDI or a model
(``improv.stage.tui --demo``).

It plays a fixed two-bar call and a two-bar machine answer in a loop, applies the knob, preset,
mode, key, port and learn intents the way the real session promises to (learn "hears" a CC after a
second), and makes up plausible latency figures. Time comes from an injectable clock, so a frozen
clock gives the same snapshot every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from improv.core import knobs
from improv.core.presets import Preset, PresetLibrary
from improv.live.session_api import (
    Intent,
    Latency,
    Learn,
    NoteView,
    NudgeKnob,
    Panic,
    PortView,
    SelectPort,
    SelectPreset,
    SetClick,
    SetKey,
    SetKnob,
    SetMode,
    Snapshot,
    State,
    Stop,
    TapTempo,
)

CALL = (0, 2, 4, 5, 7, 5, 4, 2)  # scale steps of the human's call, one a beat
SCALE = (0, 2, 4, 5, 7, 9, 11)


def _degree(step: int) -> int:
    return 60 + 12 * (step // 7) + SCALE[step % 7]


# what the demo's "backend" lists: (inputs, outputs); improv out is the demo's own virtual port
DEMO_PORTS = (["demo keyboard", "demo pads", "demo drums"], ["demo synth", "demo piano"])


class DemoSession:
    """A ``SessionLike`` that needs nothing but a clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 presets: PresetLibrary | None = None):
        self.clock = clock
        library = presets if presets is not None else PresetLibrary()
        self.presets: dict[str, Preset] = {p.name: p for p in library}
        self.names = tuple(self.presets)
        self._t, self._beat = clock(), 0.0
        self._taps: list[float] = []
        self._learn_at: float | None = None
        self._log: list[str] = ["demo session: no MIDI, no model; q quits"]
        self.snap = Snapshot(
            state=State.LISTENING, presets=self.names, ports=(
                PortView("in", "demo keyboard", True), PortView("out", "improv out", True, True)),
            latency=Latency(3.2, 7.9, 0.6, 240.0), key_detected="C major")
        self._select(1)

    # --- SessionLike ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = self.clock()
        self._beat += (now - self._t) * self.snap.bpm / 60
        self._t = now
        if self._learn_at is not None and now >= self._learn_at and self.snap.learning:
            knob, self._learn_at = self.snap.learning, None
            cc = 20 + knobs.LIVE.index(knob)
            moved = {k: v for k, v in self.snap.bindings.items() if v != cc}
            self.snap = replace(self.snap, learning=None, bindings={**moved, knob: cc})
            self._log.append(f"learned: cc{cc} turns {knob}")
        beat = self._beat
        base = beat // 16 * 16
        cycle = beat - base
        state = (State.LISTENING if cycle < 8 else State.THINKING if cycle < 8.5
                 else State.RESPONDING)
        # a two-bar call counted down to its line, then the answer's bars
        countdown = ((base, base + 8.0) if state == State.LISTENING else
                     (base + 4.5, base + 8.5) if state == State.THINKING else
                     (base + 8.5, base + 16.0))
        answer = None if state == State.LISTENING else (base + 8.5, base + 16.0)
        self.snap = replace(self.snap, beat=beat, state=state, notes=self._notes(beat),
                            countdown=countdown, answer_span=answer)
        return self.snap

    def send(self, intent: Intent) -> None:
        s = self.snap
        if isinstance(intent, NudgeKnob):
            lo = knobs.FIELDS[intent.name].lo
            self._set(intent.name, knobs.nudge(intent.name, s.knobs.get(intent.name, lo),
                                               intent.steps))
        elif isinstance(intent, SetKnob):
            try:  # refused with the words a preset file or --set would get
                value = knobs.turn(intent.name, intent.value)
            except knobs.KnobError as e:
                self._log.append(str(e))
                return
            if value is not None:
                self._set(intent.name, value)
        elif isinstance(intent, SelectPreset):
            self._select(intent.which)
        elif isinstance(intent, SetMode):
            self.snap = replace(s, mode=intent.mode)
        elif isinstance(intent, SetKey):
            self.snap = replace(s, key=intent.key)
        elif isinstance(intent, TapTempo):
            self._tap()
        elif isinstance(intent, SetClick):
            self.snap = replace(s, click=intent.on)
        elif isinstance(intent, Learn):
            self.snap = replace(s, learning=intent.knob)
            self._learn_at = self.clock() + 1.0 if intent.knob else None
        elif isinstance(intent, SelectPort):
            self._select_port(intent.role, intent.name)
        elif isinstance(intent, Panic):
            self._log.append("panic: all notes off on every channel")
        elif isinstance(intent, Stop):
            self._log.append("stopped")

    def drain_log(self) -> list[str]:
        out, self._log = self._log, []
        return out

    def list_ports(self) -> tuple[list[str], list[str]]:
        """What the ports screen scans (the app's ``list_ports``)."""
        return list(DEMO_PORTS[0]), list(DEMO_PORTS[1])

    # --- the simulation ------------------------------------------------------------------

    def _select_port(self, role: str, name: str) -> None:
        if name not in DEMO_PORTS[0 if role == "in" else 1]:  # as the real one: the old port stays
            self._log.append(f"could not open the {role}put port {name!r}: no such port")
            return
        view = PortView(role, name, True, False)
        self.snap = replace(self.snap, ports=tuple(
            view if p.role == role else p for p in self.snap.ports))
        self._log.append(f"{role}put port: {name}")

    def _set(self, name: str, value: float) -> None:
        value = knobs.clamp(name, value)
        self.snap = replace(self.snap, knobs={**self.snap.knobs, name: value},
                            bpm=value if name == "bpm" else self.snap.bpm)

    def _select(self, which: int | str) -> None:
        names = list(self.names)
        name = names[which - 1] if isinstance(which, int) and 0 < which <= len(names) else which
        p = self.presets.get(name)
        if p is None:
            self._log.append(f"no preset {which!r}")
            return
        bpm = p.bpm or self.snap.bpm
        knobs = {"temperature": p.temperature, "top_p": p.top_p, "density": p.density,
                 "response_bars": float(p.response_bars), "call_bars": float(p.call_bars),
                 "silence_beats": p.silence_beats,
                 "bpm": bpm}
        self.snap = replace(self.snap, preset=p.name, preset_number=names.index(p.name) + 1,
                            knobs=knobs, bpm=bpm, mode=p.mode, key=p.key)
        self._log.append(f"preset {p.name}")

    def _tap(self) -> None:
        now = self.clock()
        self._taps = [t for t in self._taps if now - t < 2.0] + [now]
        if len(self._taps) >= 2:
            gaps = [b - a for a, b in zip(self._taps, self._taps[1:], strict=False)]
            self._set("bpm", 60 / (sum(gaps) / len(gaps)))

    def _notes(self, beat: float) -> tuple[NoteView, ...]:
        notes = []
        first = max(0, int(beat // 16) - 2)
        for c in range(first, int(beat // 16) + 1):
            base = c * 16
            for i, step in enumerate(CALL):
                start = base + i
                notes.append(NoteView("human", _degree(step), start, start + 0.9))
                if i % 2 == 0:  # a third below, on the strong beats
                    notes.append(NoteView("human", _degree(step - 2) - 12, start, start + 1.9))
            for i, step in enumerate(reversed(CALL)):
                start = base + 8.5 + i * 0.75 + (0.25 if i % 3 == 2 else 0)
                notes.append(NoteView("machine", _degree(step + 2), start, start + 0.5))
        out = []
        for n in notes:
            if n.who == "machine" and n.start > beat:  # generated a beat ahead: planned
                if n.start <= beat + 1:
                    out.append(n)
                continue
            if n.start > beat:
                continue
            out.append(replace(n, end=None) if n.end is not None and n.end > beat else n)
        return tuple(out)
