"""Panic that stops: the panic key (intent) and a panic CC on the input, mid-answer."""

from __future__ import annotations

import mido
import pytest

from improv.live.answer import RESPONSE
from improv.live.session_api import Panic, State
from improv.live.simulate import Script, run
from tests.test_session import call_script, make_session, no_stuck

TRIGGERS = {
    "key": lambda s, t: s.send(Panic()),
    "cc120": lambda s, t: s.submit(mido.Message("control_change", channel=9, control=120), t),
    "cc123": lambda s, t: s.submit(mido.Message("control_change", channel=0, control=123), t),
}


def two_calls(bpm: float, second_at: float) -> Script:
    first = call_script(bpm, stop_at=second_at + 12.0)
    second = call_script(bpm, pitches=(67, 65, 64, 62, 60))
    first.events += [(t + second_at, m) for t, m in second.events]
    return first


def note_ons(items, since: float, until: float) -> list:
    return [x for x in items if x[2] == RESPONSE and x[1].type == "note_on"
            and x[1].velocity > 0 and since < x[0] < until]


@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_panic_mid_answer_silences_the_machine_until_the_next_call(tiny_model_dir, library,
                                                                  trigger):
    s, sim, clock, sched = make_session(tiny_model_dir, library, humanize_ms=0.0,
                                        response_bars=4)
    scheduled: list[tuple[float, mido.Message, object]] = []
    schedule = sched.schedule

    def spy(msg, tick, *, tag=None):
        scheduled.append((sim.t, msg, tag))
        return schedule(msg, tick, tag=tag)

    sched.schedule = spy
    states: list[tuple[float, State]] = []
    s.on_state = lambda st: states.append((sim.t, st))
    at: dict[str, float] = {}

    def check(session, sch):
        no_stuck(session, sch)
        if "panic" in at:
            if "after" not in at:  # the turn of the loop that took the panic
                at["after"] = sim.t
                assert session.state == State.IDLE and session.answer is None
                assert not sch.sounding() and sch.pending() == 0
        elif any(x.tag == RESPONSE and x.msg.type == "note_on" for x in sch.log):
            at["panic"] = sim.t  # the answer sounds: panic now
            TRIGGERS[trigger](session, sim.t)

    run(s, sim, sched, two_calls(clock.bpm, second_at=12.0), check=check)
    assert "panic" in at, "the answer never started"
    log = s.drain_log()
    assert sum(line.startswith("panic") for line in log) == 1, log
    # The answer had bars left to play; after the panic nothing of the machine's is
    # scheduled or sent until the next call has been played and ended.
    answered = [t for t, st in states if st == State.THINKING and t > at["panic"]]
    assert answered, "the call after the panic got no answer"
    sent = [(x.t, x.msg, x.tag) for x in sched.log]
    assert not note_ons(scheduled, at["panic"], answered[0])
    assert not note_ons(sent, at["panic"], answered[0])
    assert [st for t, st in states if t > at["panic"]][0] == State.IDLE
    # ... and the next call is answered as any other.
    assert note_ons(sent, answered[0], float("inf")), "the next answer played nothing"
    assert not sched.errors and not sched.sounding()


def test_a_controllers_panic_button_is_one_panic(tiny_model_dir, library):
    """CC 120 and 123 on all sixteen channels (or improv's own CC 123 echoed back): once."""
    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.submit(mido.Message("note_on", note=60, velocity=80), sim.t)
    s.tick_once(0)
    assert s.state == State.LISTENING
    s.drain_log()
    for ch in range(16):
        for cc in (120, 123):
            s.submit(mido.Message("control_change", channel=ch, control=cc), sim.t)
    s.tick_once(0)
    assert s.state == State.IDLE and s.call_start is None
    assert [line for line in s.drain_log() if line.startswith("panic")] == [
        "panic (CC 120 on channel 1): answer stopped, all notes off"]
    # The held key's release is not news to the model; a new call starts afresh.
    sim.t += 1.0
    s.submit(mido.Message("note_off", note=60), sim.t)
    s.submit(mido.Message("control_change", control=7, value=100), sim.t)  # not a panic CC
    s.tick_once(0)
    assert s.state == State.IDLE
    s.submit(mido.Message("note_on", note=62, velocity=80), sim.t)
    s.tick_once(0)
    assert s.state == State.LISTENING and s.keys_down == {62}


def test_panic_ccs_are_configurable(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.options.panic_ccs = (119,)
    s.submit(mido.Message("note_on", note=60, velocity=80), sim.t)
    s.submit(mido.Message("control_change", control=123), sim.t)
    s.tick_once(0)
    assert s.state == State.LISTENING
    s.submit(mido.Message("control_change", control=119, value=127), sim.t)
    s.tick_once(0)
    assert s.state == State.IDLE
