"""Panic: everything the machine plays stops, and stays stopped until the next call.

This module owns what a panic does to a set: the panic key (the UI's Panic intent),
SIGUSR1 (the same intent) or a panic CC on the input (All Sound Off 120, All Notes
Off 123 by default: ``SessionOptions.panic_ccs``). A panic that only silenced the
output would be undone a moment later by the answering loop, which keeps generating
the answer in flight; so the answer and the call are dropped from the session first,
then the scheduler forgets what is pending and ends what sounds. The set is left as
a fresh one is: IDLE, the stream closed (the machine's notes as far as they sounded,
the player's held keys), ready for the next call.

Controllers often send their panic as CC 120 and 123 on all sixteen channels, and a
DAW echoing improv's own CC 123 back would panic it again: panic CCs within
``HOLDOFF_S`` of a panic are absorbed, so one press is one panic and one line.
"""

from __future__ import annotations

from improv.live.answer import RESPONSE
from improv.live.session_api import State

PANIC_CCS = (120, 123)  # All Sound Off, All Notes Off
HOLDOFF_S = 0.5  # panic CCs this soon after a panic are the same press (or its echo)


class Panic:
    """The session's panic; runs on the session thread."""

    def __init__(self, session) -> None:
        self.session = session
        self.last: float | None = None  # the session clock's time of the last panic
        self.count = 0

    def cc(self, control: int, channel: int, t: float) -> bool:
        """A CC from the input: True when it is a panic CC (acted on, or absorbed)."""
        s = self.session
        if control not in s.options.panic_ccs:
            return False
        if self.last is not None and 0 <= t - self.last < HOLDOFF_S:
            return True
        self.now(f" (CC {control} on channel {channel + 1})", t)
        return True

    def now(self, why: str = "", t: float | None = None) -> None:
        """Stop the answer and the call, end every note, back to a fresh set's IDLE."""
        s = self.session
        self.last = s.clock.time_fn() if t is None else t
        self.count += 1
        tick = int(s.now_tick())
        r = s.answer
        s.answer = None  # first: nothing generates or schedules for it again
        s.answering.end()
        s.scheduler.cancel(RESPONSE)
        s.scheduler.panic()  # thru notes, program changes, anything pending; CC 123
        s.out.cut(tick)  # the planned answer is off the stage's roll too
        if r is not None:
            if r.first_note and tick >= r.start_tick:
                s.answering.keep_heard(r, tick)  # the context keeps what sounded, then TURN
            else:  # prepared, never heard: the stream forgets it, as the player did
                s.stream.restore(r.call)
                if s.responses and s.responses[-1].get("first_note_deadline") is None:
                    s.responses.pop()
        # The player's held keys end here in the stream; their releases are not news.
        enc = s.stream.encoder
        if enc.sounding:
            s.stream.feed(enc.close(max(enc.tick, tick)), human=True)
        s._closed |= s.keys_down
        s.keys_down.clear()
        s.call_start = None
        s.handover.ended()
        s.set_state(State.IDLE)
        s.intake.panicked()
        s.say(f"panic{why}: answer stopped, all notes off")
