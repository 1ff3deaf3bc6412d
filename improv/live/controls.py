"""What the player turns: knobs, presets and MIDI learn, as one object.

This module owns the set's current preset and how a change of it takes effect:
a knob turn (from the UI, the command line or a learned CC) is clamped to the
knob's range and changes the preset, the sampler's constraints or the clock; a
preset switch waits for the next phrase unless asked for at once. The session
owns the conversation and calls in here between two model steps, on its own
thread; it is told what to do about the music (re-style the stream, cut the
answer, send a program change), never reached into.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from improv.core import knobs as registry
from improv.core.presets import Preset, PresetLibrary, apply_overrides
from improv.live import session_api as api
from improv.live.midi_learn import Bindings, Learner
from improv.live.sampler import Constraints, Sampler
from improv.live.session_api import Intent

SWITCH_EVERY_S = 0.25  # the least time between two preset switches (program change floods)


class ControlsHost(Protocol):
    """What the controls ask of the session: the whole of their reach into it."""

    between_phrases: bool

    def say(self, line: str) -> None: ...
    def cut(self) -> None: ...
    def restyle(self, style: str) -> None: ...
    def send_program(self) -> None: ...
    def mark(self, text: str) -> None: ...


@dataclass(frozen=True)
class Switch:
    """A preset that took effect: what the session must do about it."""

    preset: Preset
    restyle: bool  # the style changed: the stream re-encodes under the new STYLE


class Controls:
    """The set's preset, knobs and CC bindings; changed only on the session thread."""

    def __init__(
        self,
        presets: PresetLibrary,
        preset: Preset | str | int | None,
        sampler: Sampler,
        clock,
        learner: Learner | None = None,
        on_learned: Callable[[Bindings], object] | None = None,
    ) -> None:
        self.presets = presets
        self.preset = self.resolve(preset) if preset is not None else presets.default()
        self.pending: Preset | None = None  # waits for the next phrase
        self.asked: tuple[int | str, bool] | None = None  # held back by the rate limit
        self.last_switch = float("-inf")  # the clock's time of the last switch taken
        self.switches = 0  # switches taken (resolved and applied or made pending)
        self.sampler = sampler
        self.clock = clock
        self.learner = learner
        self.on_learned = on_learned  # saves the bindings (jam: off the session thread)
        sampler.set_constraints(constraints_for(self.preset, sampler.constraints))

    # --- knobs ---------------------------------------------------------------------------------

    def value(self, name: str) -> float:
        if name == "bpm":
            return self.clock.bpm
        return float(getattr(self.preset, name))

    def values(self) -> dict[str, float]:
        return {name: self.value(name) for name in registry.LIVE}

    def set_knob(self, name: str, value: float) -> str | None:
        """Turn a knob to ``value``; returns the line to say when it is refused.

        Refused exactly as the same value in a preset file or a ``--set`` flag would be.
        """
        try:
            v = registry.turn(name, value)
        except (KeyError, ValueError) as e:
            return str(e).strip("'\"")
        if v is None:  # the knob's "off" value (bpm 0: keep the tempo)
            return None
        if name == "bpm":
            self.clock.set_tempo(v)
            return None
        return self.update(**{name: v})

    def nudge(self, name: str, steps: int) -> str | None:
        """A step up or down, stopping at the ends of the knob's range."""
        if name not in registry.LIVE:
            return f"unknown knob {name!r}"
        return self.set_knob(name, registry.nudge(name, self.value(name), steps))

    def update(self, **changes: object) -> str | None:
        """Change preset fields live; returns a line to say when refused."""
        try:
            self.preset = apply_overrides(self.preset, **changes)
        except ValueError as e:
            return str(e)
        self.sampler.set_constraints(constraints_for(self.preset, self.sampler.constraints))
        return None

    def feed_cc(self, control: int, value: int, channel: int) -> str | None:
        """A CC from the player (``channel`` one-based): a bound knob turns, or learning ends."""
        if self.learner is None:
            return None
        done = self.learner.feed(control, value, channel)
        if done is None:
            return None
        said = self.set_knob(done.knob, registry.clamp(done.knob, done.value))
        if done.learned:
            if self.on_learned is not None:
                self.on_learned(self.learner.bindings)
            return f"learned: CC {control} -> {done.knob}"
        return said

    def learn(self, knob: str | None) -> str | None:
        if self.learner is None:
            return None
        self.learner.arm(knob)
        return f"MIDI learn: move a control for {knob}" if knob else None

    # --- presets -------------------------------------------------------------------------------

    def resolve(self, which: Preset | str | int) -> Preset:
        """A preset by itself, its number (1-based), its name or its file's name."""
        return self.presets.find(which)

    # --- intents and switches (``host``: the session, see ControlsHost) --------------------------

    def on_intent(self, intent: Intent, host: ControlsHost) -> None:
        """A UI's knob, mode, key, preset, tap or learn intent."""
        said = None
        if isinstance(intent, api.SetKnob):
            said = self.set_knob(intent.name, intent.value)
        elif isinstance(intent, api.NudgeKnob):
            said = self.nudge(intent.name, intent.steps)
        elif isinstance(intent, api.SetMode):
            said = self.update(mode=intent.mode)
        elif isinstance(intent, api.SetKey):
            said = self.update(key=intent.key)
        elif isinstance(intent, api.SetClick):
            said = self.update(click=intent.on)
        elif isinstance(intent, api.SelectPreset):
            self.switch(intent.which, now=intent.now, host=host)
        elif isinstance(intent, api.TapTempo):
            bpm = self.clock.tap()
            said = None if bpm is None else f"tap tempo: {bpm:.1f} BPM"
        elif isinstance(intent, api.Learn):
            said = self.learn(intent.knob)
        if said:
            host.say(said)

    def takes_cc(self, control: int, channel: int) -> bool:
        """Whether a CC (``channel`` one-based) is a knob's or being learned: not the synth's."""
        learner = self.learner
        return learner is not None and (learner.armed is not None
                                        or learner.bindings.knob_for(control, channel) is not None)

    def switch(self, which: int | str, now: bool, host: ControlsHost) -> None:
        """Switch preset: at the next phrase, or at once (the answer is cut like a barge-in).

        At most one switch every ``SWITCH_EVERY_S``: a switch re-styles the stream (tens of
        ms), so a flood of program changes would stall the session. Those that come
        sooner are coalesced, the latest wins, and it is taken when due (``tick``).
        """
        if self.clock.time_fn() - self.last_switch < SWITCH_EVERY_S:
            self.asked = (which, now)
            return
        self._switch(which, now, host)

    def tick(self, host: ControlsHost) -> None:
        """Each turn of the session loop: a held-back switch is taken once it is due."""
        if self.asked is not None and self.clock.time_fn() - self.last_switch >= SWITCH_EVERY_S:
            (which, now), self.asked = self.asked, None
            self._switch(which, now, host)

    def _switch(self, which: int | str, now: bool, host: ControlsHost) -> None:
        self.last_switch = self.clock.time_fn()
        self.switches += 1
        try:
            preset = self.resolve(which)
        except ValueError as e:  # PresetError: its reason says what there is
            host.say(getattr(e, "reason", str(e)))
            return
        self.pending = preset
        if now or preset.switch == "now" or host.between_phrases:
            host.cut()
            self.apply_pending(host)
        else:
            host.say(f"preset {preset.name} at the next phrase")

    def apply_pending(self, host: ControlsHost) -> None:
        """At a phrase boundary: the preset waiting for one takes effect."""
        switch = self.take_pending()
        if switch is None:
            return
        host.send_program()
        if switch.restyle:
            host.restyle(switch.preset.style)
        host.say(f"preset: {switch.preset.name} (style {switch.preset.style})")
        host.mark(f"preset {switch.preset.name}")

    def take_pending(self) -> Switch | None:
        """At a phrase boundary: the preset waiting for one takes effect."""
        p = self.pending
        if p is None:
            return None
        self.pending = None
        # The click is the set's, not the style's: a switch may turn it on, never off.
        p = replace(p, click=p.click or self.preset.click)
        old_style = self.preset.style
        self.preset = p
        self.sampler.set_constraints(constraints_for(p, self.sampler.constraints))
        if p.bpm:
            self.clock.set_tempo(p.bpm)
        return Switch(p, restyle=p.style != old_style)


def constraints_for(preset: Preset, old: Constraints) -> Constraints:
    """The sampler's constraints for ``preset``, keeping what presets do not set."""
    new = Constraints.from_preset(preset)
    return replace(old, **{f: getattr(new, f) for f in new.__dataclass_fields__})
