"""The set's tempo map, meters and markers, written to the recording as they change.

This module owns what the recording's tempo track says besides the first tempo and
meter (those the recorder is opened with): a tempo change from a tap, the bpm knob,
a preset's tempo or a followed MIDI master, a meter change, and a marker per preset
switch. Tempo and meter are polled once per turn of the session loop rather than
hooked into each of the places that move them, so none is missed; a followed master
moves the clock's tempo a hair at every pulse, so only a move of more than
``TEMPO_STEP_BPM`` from the last written tempo is written (the file's ticks are
musical: a smaller error changes how fast the file plays, not where a note sits).
Ticks are the clock's, as every recorded note's. And the machine track's notes, as
the scheduler reports them sent (:func:`machine_track`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import mido

from improv.live.click import CLICK
from improv.live.intake import THRU

TEMPO_STEP_BPM = 0.5
NOT_MACHINE = (THRU, CLICK)  # scheduler tags of what the machine sends but does not play


class Marks:
    """Writes tempo, meter and marker events of one session to its recorder."""

    def __init__(self, session) -> None:
        self.session = session
        clock = session.clock
        self.bpm = clock.bpm  # what the file says now (the recorder opened with it)
        self.meter = (clock.meter.numerator, clock.meter.denominator)

    def poll(self) -> None:
        """Write the tempo or meter if it moved since the last written one."""
        s = self.session
        if s.recorder is None:
            return
        clock = s.clock
        bpm = clock.bpm
        if abs(bpm - self.bpm) > TEMPO_STEP_BPM:
            tick0 = clock.mapping()[0]  # where the new tempo took effect (a tap's tick)
            s.recorder.set_tempo(bpm, max(0.0, min(tick0, clock.now_tick())))
            self.bpm = bpm
        meter = (clock.meter.numerator, clock.meter.denominator)
        if meter != self.meter:
            s.recorder.set_meter(*meter, max(0, clock.bar_origin))
            self.meter = meter

    def marker(self, text: str) -> None:
        """A marker now (a preset switch)."""
        s = self.session
        if s.recorder is not None:
            s.recorder.marker(text, max(0.0, s.clock.now_tick()))


def machine_track(recorder, clock) -> Callable[[mido.Message, float, Hashable], None]:
    """The scheduler's ``on_sent`` that records the machine's notes as they went out.

    The player's notes passed on with thru (tag ``THRU``) go out through the same
    scheduler; they are the player's, recorded once on arrival (:mod:`improv.live.intake`),
    so they are not the machine track's; nor is the click (tag ``CLICK``).
    """

    def on_sent(msg: mido.Message, t: float, tag: Hashable) -> None:
        if recorder is not None and tag not in NOT_MACHINE and msg.type in ("note_on", "note_off"):
            recorder.add("machine", msg, max(0.0, clock.time_to_tick(t)))

    return on_sent
