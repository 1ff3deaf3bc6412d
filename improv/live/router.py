"""The player's MIDI messages, each to the part of the set it concerns.

This module owns what an incoming message means: a note is the call (or, on the
control channel, a preset switch), a CC is a panic (:mod:`improv.live.panic`), the
end-call pedal, a bound knob or the player's pedal (recorded, passed on with thru, as
pitch bend and aftertouch are), a program change switches presets (when
``SessionOptions.program_change``), MIDI beat clock and transport go to the clock
follower. A note's timestamp becomes a stream tick in :mod:`improv.live.intake`, the last
place seconds appear on the way in.
"""

from __future__ import annotations

import mido

from improv.live.intake import EXPRESSION
from improv.live.session_api import State

CLOCK_MESSAGES = frozenset({"clock", "start", "stop", "continue", "songpos"})


class Router:
    """Routes the session's incoming messages; runs on the session thread."""

    def __init__(self, session) -> None:
        self.session = session

    def on_message(self, msg: mido.Message, t: float) -> None:
        s = self.session
        kind = msg.type
        channel = s.options.control_channel
        control = channel is not None and getattr(msg, "channel", None) == channel
        if kind in CLOCK_MESSAGES:
            self._clock(msg, t)
            return
        if kind in ("note_on", "note_off"):
            if control:
                if kind == "note_on" and msg.velocity > 0:
                    s.controls.switch(msg.note % 12 + 1, now=False, host=s)
                return
            s.intake.note(msg.note, msg.velocity if kind == "note_on" else 0, t)
        elif kind == "control_change":
            if not s.panic.cc(msg.control, msg.channel, t):
                self._cc(msg, t, control)
        elif kind in EXPRESSION and not control:
            s.intake.expression(msg, t)
        elif kind == "program_change" and s.options.program_change \
                and (channel is None or control):
            s.controls.switch(msg.program + 1, now=False, host=s)

    def _cc(self, msg: mido.Message, t: float, control: bool) -> None:
        s = self.session
        pedals = {s.preset.end_call_cc, *s.options.pedal_ccs} - {None}
        cc, value = msg.control, msg.value
        if not control and not s.controls.takes_cc(cc, msg.channel + 1):
            s.intake.expression(msg, t)  # the player's pedals: recorded, and passed on thru
        if cc in pedals and value >= 64 and s.state == State.LISTENING:
            s.end_call("pedal")
            return
        said = s.controls.feed_cc(cc, value, msg.channel + 1)  # learn's channels: 1-16
        if said:
            s.say(said)

    def _clock(self, msg: mido.Message, t: float) -> None:
        s = self.session
        if s.follower is None:
            return
        if msg.type != "clock":
            s.cut()  # the master starts or moves: the answer stops
        s.follower.feed_message(msg, t)
        if msg.type != "clock":
            self._transport()

    def _transport(self) -> None:
        """The master started or moved: the stream's bars realign on its bars, time goes on."""
        s = self.session
        bar = s.clock.bar_ticks
        lag = s.stream.tick - s.clock.now_tick()
        s.offset = max(0, -(-int(lag) // bar)) * bar if lag > 0 else 0
        s.say(f"MIDI clock: transport at bar {int(s.clock.now_tick()) // bar + 1}")
