"""The click and the count-in: beats on the clock, sent through the scheduler.

This module owns when the set clicks and when it starts listening. A click is a short
note on the General MIDI drum channel (10), a wood block on the downbeat and a side stick
on the other beats, tagged ``CLICK`` so a barge-in (which cancels the answer's tag) never
touches it. Each click is handed to the scheduler ``LEAD_BEATS`` ahead of its beat with a
deadline in clock ticks; the scheduler binds a tick to a time only when it sends, so a tap,
a tempo knob or a followed MIDI master's corrections reach every click already queued. A
clock that jumps (a master's song position) is followed: the queued clicks are dropped and
the next beat line after the jump is the next click.

The count-in (``count_in`` bars, read from the start preset) clicks from the first bar
line after the session starts, whether ``click`` is on or not, and the set listens from
the bar line after it. A clock that jumps during the count-in (a followed master's Start)
starts it again from its next bar line; once over, it is over, whatever the clock does. A
note played during the count-in is heard (recorded, passed thru, drawn on the roll) but is
no call: it does not reach the model nor start a call, and its release is dropped with it.
A note a hair before the listening line (``LINE_SLACK``) belongs to the line, as a first
note does anywhere else.

``click`` on (a preset field, ``--set click=true``, the stage's ``c`` key) keeps clicking
after the count-in, for the whole set; it survives preset switches (the set's, not the
style's). The click follows the clock, internal or followed; it does not know whether a
followed master's transport is stopped (the clock free-runs then, and so does the click).
"""

from __future__ import annotations

import mido

from improv.live.handover import LINE_SLACK

CLICK = "click"  # the scheduler tag of the click's notes
CHANNEL = 9  # MIDI channel 10: General MIDI drums
DOWNBEAT_NOTE = 76  # hi wood block
BEAT_NOTE = 37  # side stick
DOWNBEAT_VELOCITY = 110
BEAT_VELOCITY = 80
LEAD_BEATS = 0.5  # a click is scheduled this far ahead of its beat
LENGTH_TICKS = 3  # a thirty-second note: a drum sound needs only its start


class Click:
    """The set's click and count-in; runs on the session thread (``tick`` each loop turn)."""

    def __init__(self, session) -> None:
        self.session = session
        self.next: int | None = None  # clock tick of the next beat not scheduled yet
        self.count_from: int | None = None  # clock tick the count-in starts on
        self.listen_at: int | None = None  # clock tick the set listens from (after it)
        self.over = False  # the count-in is over (or there was none)
        self.sent = 0  # clicks scheduled (note-ons)
        self._started = False

    # --- the count-in --------------------------------------------------------------------

    def start(self) -> None:
        """At the set's start: a count-in of the preset's ``count_in`` bars, if any."""
        s = self.session
        self._started = True
        if not s.preset.count_in:
            self.over = True
            return
        clock = s.clock
        self._count_in(clock.next_bar(clock.now_tick() + LEAD_BEATS * clock.beat_ticks))

    def _count_in(self, first: int) -> None:
        s, bars = self.session, int(self.session.preset.count_in)
        clock = s.clock
        self.count_from, self.next = first, first
        self.listen_at = first + bars * clock.bar_ticks
        s.say(f"count-in: {bars} bar(s), listening from bar "
              f"{(self.listen_at - clock.bar_origin) // clock.bar_ticks + 1}")

    def counting(self, tick: float | None = None) -> bool:
        """Whether the count-in runs at clock tick ``tick`` (default: now)."""
        if self.over or self.listen_at is None:
            return False
        return (self.session.clock.now_tick() if tick is None else tick) < self.listen_at

    def holds(self, pitch: int, velocity: int, at: float) -> bool:
        """Whether the player's note at stream tick ``at`` falls in the count-in: heard, no
        call (its release is dropped with it, see ``Session.hear``)."""
        s = self.session
        if velocity <= 0 or not self.counting(s.clock_tick(at) + LINE_SLACK):
            return False
        s._closed.add(pitch)
        return True

    # --- the clicks --------------------------------------------------------------------------

    @property
    def on(self) -> bool:
        """Whether the click sounds now: switched on, or counting in."""
        return bool(self.session.preset.click) or self.counting()

    def tick(self) -> None:
        """Each turn of the session loop: hand the scheduler the beats due within the lead."""
        if not self._started:
            self.start()
        s = self.session
        clock = s.clock
        now = clock.now_tick()
        if not self.over and self.listen_at is not None and now >= self.listen_at:
            self.over = True
        if not self.on:
            if self.next is not None:
                self.next = None
                s.scheduler.cancel(CLICK)  # switched off: what is queued goes too
            return
        beat, horizon = clock.beat_ticks, now + LEAD_BEATS * clock.beat_ticks
        if self.next is None or self.next < now - beat or self.next > horizon + clock.bar_ticks:
            if self.next is not None:  # the clock jumped: its queued clicks are in the wrong place
                s.scheduler.cancel(CLICK)
            if self.counting():  # the count-in starts again from the next bar line
                self._count_in(clock.next_bar(now))
            else:
                self.next = clock.next_beat(now)
        while self.next <= horizon:
            if not s.preset.click and not self.counting(self.next):
                break  # the count-in is over and the click is off: no click on the line
            self._send(self.next)
            self.next += beat

    def _send(self, tick: int) -> None:
        s = self.session
        clock = s.clock
        down = (tick - clock.bar_origin) % clock.bar_ticks == 0
        note = DOWNBEAT_NOTE if down else BEAT_NOTE
        velocity = DOWNBEAT_VELOCITY if down else BEAT_VELOCITY
        s.scheduler.schedule(mido.Message("note_on", channel=CHANNEL, note=note,
                                          velocity=velocity), tick, tag=CLICK)
        s.scheduler.schedule(mido.Message("note_off", channel=CHANNEL, note=note, velocity=0),
                             tick + LENGTH_TICKS, tag=CLICK)
        self.sent += 1


__all__ = ["CLICK", "Click"]
