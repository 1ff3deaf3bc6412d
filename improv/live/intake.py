"""The player's messages on their way in: recorded on arrival, fed to the model while fresh.

This module owns what the player's input costs the session. Every note is written to
the recording and the piano roll the moment the session sees it, whatever the load.
The model is fed only what it can digest: a note more than ``shed_after_ms`` behind
the clock (a flood the session thread could not keep up with) is shed from the model,
so after a flood the session is back at the present within a loop, not seconds later.
A shed note-on's release is shed too; the release of a key that *was* fed is always
fed, so no key is left sounding in the model's context. Shed notes are counted:
``dropped`` (the input queue's drops plus these) is what the snapshot's latency shows.

With ``SessionOptions.thru`` (in-process ports; the I/O process forwards on its own)
the player's notes, CCs (sustain 64, sostenuto 66, soft 67...), pitch bend and
aftertouch go to the output on the preset's channel; a shed note-on is not forwarded
late, and only a forwarded note-on's release follows it.
"""

from __future__ import annotations

import mido

THRU = "thru"  # the scheduler tag of the player's messages passed to the output
EXPRESSION = frozenset({"pitchwheel", "aftertouch", "polytouch"})


class Intake:
    """The player's messages into the recording, the output (thru) and the model."""

    def __init__(self, session) -> None:
        self.session = session
        self.shed = 0  # notes kept from the model because they arrived too late
        self._thru_on: set[int] = set()  # pitches whose note-on was forwarded

    @property
    def dropped(self) -> int:
        """Notes the model never saw: lost by the input queue, or shed here."""
        return getattr(self.session.inbox, "dropped", 0) + self.shed

    def note(self, pitch: int, velocity: int, t: float) -> None:
        """A note of the player's (velocity 0: its release) stamped at time ``t``."""
        s = self.session
        at = s.clock.time_to_tick(t) + s.offset  # seconds end here, at the input
        self._record(pitch, velocity, at)
        now = s.clock.time_fn()
        fresh = (now - t) * 1000.0 <= s.options.shed_after_ms
        if s.options.thru:
            self._thru_note(pitch, velocity, fresh)
        if not fresh and (velocity > 0 or pitch not in s.keys_down):
            self.shed += 1  # (a fed key's release always goes in: nothing left sounding)
            return
        s.hear(pitch, velocity, at)
        s.ingest_ms.append((s.clock.time_fn() - t) * 1000.0)  # note in -> tokens fed

    def expression(self, msg: mido.Message, t: float) -> None:
        """A pedal CC, pitch bend or aftertouch: recorded as the player's, forwarded on thru."""
        s = self.session
        if s.recorder is not None:  # on the channel the human track's notes are on
            s.recorder.add("human", msg.copy(channel=0), max(0.0, s.clock.time_to_tick(t)))
        if s.options.thru:
            s.scheduler.schedule(msg.copy(channel=s.preset.midi_channel), None, tag=THRU)

    def _thru_note(self, pitch: int, velocity: int, fresh: bool) -> None:
        s = self.session
        if velocity > 0 and not fresh:
            return
        if velocity == 0:
            if pitch not in self._thru_on:
                return
            self._thru_on.discard(pitch)
        else:
            self._thru_on.add(pitch)
        kind = "note_on" if velocity else "note_off"
        s.scheduler.schedule(mido.Message(kind, channel=s.preset.midi_channel, note=pitch,
                                          velocity=velocity), None, tag=THRU)

    def panicked(self) -> None:
        """The scheduler ended every thru note: their releases are not forwarded."""
        self._thru_on.clear()

    def _record(self, pitch: int, velocity: int, at: float) -> None:
        s = self.session
        s.out.note("human", pitch, velocity, at)
        if s.recorder is not None:
            kind = "note_on" if velocity else "note_off"
            s.recorder.add("human", mido.Message(kind, note=pitch, velocity=velocity),
                           max(0.0, s.clock_tick(at)))
