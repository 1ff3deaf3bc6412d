"""What the player turns: knobs, presets and the other intents of a UI.

This module owns how a knob turn, a preset switch or a panic takes effect on
the session: between two model steps, on the session thread, never in the
middle of one. It is a mixin of :class:`improv.live.session.Session` (it reads and
sets the session's preset, sampler, clock and engine), kept apart so that the
call-and-response machine reads on its own.

A preset switch happens at the next phrase unless asked for at once (or the
preset says ``switch = "now"``); at once, a sounding answer is cut exactly like
a barge-in, so no note is left hanging and the context stays what was heard.
A new style re-encodes the recent context under the new STYLE token.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import mido

from improv.core.presets import Preset, apply_overrides
from improv.live.sampler import Constraints
from improv.live.session_api import (
    KNOBS,
    Intent,
    Learn,
    NudgeKnob,
    Panic,
    PortView,
    SelectPort,
    SelectPreset,
    SetKey,
    SetKnob,
    SetMode,
    State,
    Stop,
    TapTempo,
)

# the scheduler tag of a program change (kept apart from the answer's notes)
PROGRAM = "program"


class PlayerControls:
    """Knobs, presets and intents; mixed into Session."""

    def _on_intent(self, intent: Intent) -> None:
        if isinstance(intent, SetKnob):
            self._set_knob(intent.name, intent.value)
        elif isinstance(intent, NudgeKnob):
            lo, hi, step = KNOBS[intent.name]
            self._set_knob(intent.name, self._knob_value(intent.name) + intent.steps * step)
        elif isinstance(intent, SelectPreset):
            self._switch_preset(intent.which, now=intent.now)
        elif isinstance(intent, SetMode):
            self._update_preset(mode=intent.mode)
        elif isinstance(intent, SetKey):
            self._update_preset(key=intent.key)
        elif isinstance(intent, TapTempo):
            bpm = self.clock.tap()
            if bpm is not None:
                self._say(f"tap tempo: {bpm:.1f} BPM")
        elif isinstance(intent, Learn):
            if self.controls is not None:
                self.controls.arm(intent.knob)
                if intent.knob:
                    self._say(f"MIDI learn: move a control for {intent.knob}")
        elif isinstance(intent, Panic):
            self.scheduler.panic()
            self._say("panic: all notes off")
        elif isinstance(intent, SelectPort):
            if self.port_selector is None:
                self._say("ports are fixed in this session")
            else:  # opening a port may block on a driver: never on the session thread
                threading.Thread(target=self._select_port, args=(intent.role, intent.name),
                                 name="improv-port-select", daemon=True).start()
        elif isinstance(intent, Stop):
            self._stop.set()

    def _select_port(self, role: str, name: str) -> None:
        try:
            view = self.port_selector(role, name)
        except Exception as e:  # the old port stays in use
            self._say(f"could not open the {role}put port {name!r}: {e}")
            return
        self.set_port(view)
        self._say(f"{role}put port: {view.name}")

    def set_port(self, view: PortView) -> None:
        """A port changed (picked, unplugged, back); safe from any thread."""
        self.ports = tuple(view if p.role == view.role else p for p in self.ports) or (view,)

    def _knob_value(self, name: str) -> float:
        if name == "bpm":
            return self.clock.bpm
        return float(getattr(self.preset, name))

    def _set_knob(self, name: str, value: float) -> None:
        if name not in KNOBS:
            self._say(f"unknown knob {name!r}")
            return
        lo, hi, _ = KNOBS[name]
        value = min(max(float(value), lo), hi)
        if name == "bpm":
            self.clock.set_tempo(value)
        elif name in ("response_bars", "call_bars"):
            self._update_preset(**{name: int(round(value))})
        else:
            self._update_preset(**{name: value})

    def _update_preset(self, **changes) -> None:
        try:
            self.preset = apply_overrides(self.preset, **changes)
        except ValueError as e:
            self._say(str(e))
            return
        self.sampler.set_constraints(constraints_for(self.preset, self.sampler.constraints))

    def _resolve(self, which: Preset | str | int) -> Preset:
        if isinstance(which, Preset):
            return which
        if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
            return self.presets.by_number(int(which))
        return self.presets.get(which)

    def _switch_preset(self, which: int | str, now: bool) -> None:
        try:
            preset = self._resolve(which)
        except (KeyError, IndexError, ValueError) as e:
            self._say(f"no preset {which!r}: {e}")
            return
        if now or preset.switch == "now" or self.state == State.IDLE:
            if self._response is not None:
                self._barge_in(int(self._now()))
            self._pending_preset = preset
            self._apply_pending_preset()
        else:
            self._pending_preset = preset
            self._say(f"preset {preset.name} at the next phrase")

    def _apply_pending_preset(self) -> None:
        p = self._pending_preset
        if p is None:
            return
        self._pending_preset = None
        old_style = self.preset.style
        self.preset = p
        self.sampler.set_constraints(constraints_for(p, self.sampler.constraints))
        if p.bpm:
            self.clock.set_tempo(p.bpm)
        self._program_sent = False
        self._send_program()
        if p.style != old_style:
            self._restyle(p.style)
        self._say(f"preset: {p.name} (style {p.style})")

    def _restyle(self, style: str) -> None:
        """The STYLE token sits at position 0: re-encode the recent context under the new one."""
        try:
            keep = self.engine.context_tokens[1:][-(self.engine.context // 2):]
            self.engine.reset(style)
            self._logits = self.engine.feed(keep) if keep else self.engine.logits
        except Exception as e:  # an unknown style keeps the old one playing
            self._say(f"style {style!r} unavailable: {e}")

    def _send_program(self) -> None:
        if self._program_sent or self.preset.program is None:
            return
        self.scheduler.schedule(
            mido.Message("program_change", channel=self._channel(), program=self.preset.program),
            None, tag=PROGRAM)
        self._program_sent = True


def constraints_for(preset: Preset, old: Constraints) -> Constraints:
    """The sampler's constraints for ``preset``, keeping what presets do not set."""
    new = Constraints.from_preset(preset)
    return replace(old, **{f: getattr(new, f) for f in new.__dataclass_fields__})
