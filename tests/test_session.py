"""The call-and-response session: a real engine and sampler on simulated and real time."""

from __future__ import annotations

import random
import time

import mido
import numpy as np
import pytest

from improv.core import tokens as tk
from improv.core.presets import apply_overrides
from improv.live.answer import RESPONSE
from improv.live.clock import Clock
from improv.live.engine import Engine
from improv.live.scheduler import Scheduler
from improv.live.session import Session, SessionOptions
from improv.live.session_api import NudgeKnob, SelectPreset, SetKnob, State
from improv.live.simulate import Script, SimScheduler, random_script, run, sim_session


def make_session(model_dir, library, preset=1, bpm=160.0, seed=0, **overrides):
    engine = Engine(model_dir, provider="cpu", background=False)
    p = library.by_number(preset)
    if overrides:
        p = apply_overrides(p, **overrides)
    return sim_session(engine, library, p, bpm, seed=seed)


def call_script(clock_bpm: float, pitches=(60, 62, 64, 65, 67), stop_at=12.0) -> Script:
    beat = 60.0 / clock_bpm
    events = []
    for i, p in enumerate(pitches):
        events.append((0.1 + i * beat / 2, mido.Message("note_on", note=p, velocity=80)))
        events.append((0.1 + (i + 0.9) * beat / 2, mido.Message("note_off", note=p)))
    return Script(events, stop_at=stop_at)


def machine_notes(sched: SimScheduler) -> list:
    return [x for x in sched.log if x.tag == RESPONSE and x.msg.type in ("note_on", "note_off")]


def no_stuck(session, sched) -> None:
    """Once an answer is over (nothing in flight), no machine note may still sound."""
    if session.answer is None and sched.pending(RESPONSE) == 0:
        assert not sched.sounding(RESPONSE), f"stuck machine notes {sched.sounding(RESPONSE)}"


def test_answer_starts_on_the_planned_bar_line(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library, humanize_ms=0.0, swing=0.0)
    run(s, sim, sched, call_script(clock.bpm), check=no_stuck)
    assert s.responses, "the call got no answer"
    r = s.responses[0]
    assert r["start_tick"] % clock.bar_ticks == 0
    first_on = next(x for x in machine_notes(sched) if x.msg.type == "note_on")
    assert first_on.t == pytest.approx(r["planned_time"], abs=1e-9)
    assert first_on.t == pytest.approx(clock.tick_to_time(r["start_tick"]), abs=1e-9)


def test_every_machine_note_on_has_its_note_off(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library, preset=2)
    run(s, sim, sched, call_script(clock.bpm, stop_at=20.0), check=no_stuck)
    notes = machine_notes(sched)
    assert any(x.msg.type == "note_on" for x in notes)
    open_: set[int] = set()
    for x in notes:
        if x.msg.type == "note_on" and x.msg.velocity > 0:
            assert x.msg.note not in open_, "note-on for a key the machine already holds"
            open_.add(x.msg.note)
        else:
            open_.discard(x.msg.note)
    assert not open_
    assert not sched.errors


def test_barge_in_stops_the_answer_and_rewinds_the_context(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library, humanize_ms=0.0)
    script = call_script(clock.bpm, stop_at=30.0)
    s_probe, sim2, clock2, sched2 = make_session(tiny_model_dir, library, humanize_ms=0.0)
    run(s_probe, sim2, sched2, call_script(clock.bpm, stop_at=30.0))
    first = next(x for x in machine_notes(sched2) if x.msg.type == "note_on")
    barge_t = first.t - sim2.t + script.stop_at + 0.3  # seconds from the script's start
    script.events.append((barge_t, mido.Message("note_on", note=72, velocity=90)))
    script.events.append((barge_t + 0.2, mido.Message("note_off", note=72)))
    states = []
    s.on_state = states.append
    run(s, sim, sched, script, check=no_stuck)
    assert "barge-in: the answer stops" in s.drain_log()
    t_barge = sim.t - script.stop_at + barge_t
    late_ons = [x for x in machine_notes(sched)
                if x.msg.type == "note_on" and x.t > t_barge + 1e-6 and x.t < t_barge + 0.2]
    assert not late_ons, "the machine kept playing over the player"
    assert State.LISTENING in states[states.index(State.RESPONDING):]
    # The context holds the player's note after a TURN that followed the cut answer.
    ctx = s.engine.context_tokens
    assert tk.note_on_token(72) in ctx
    assert tk.TURN in ctx[: ctx.index(tk.note_on_token(72))]


def test_engine_rewind_equals_never_having_fed(tiny_model_dir):
    a = [tk.BAR, tk.velocity_token(8), tk.note_on_token(60), tk.time_shift_token(12)]
    b = [tk.note_on_token(64), tk.time_shift_token(6), tk.note_off_token(64)]
    c = [tk.note_off_token(60), tk.TURN]
    e1 = Engine(tiny_model_dir, provider="cpu", background=False)
    e1.reset("folk")
    e1.feed(a + b)
    e1.rewind(len(b))
    got = e1.feed(c)
    e2 = Engine(tiny_model_dir, provider="cpu", background=False)
    e2.reset("folk")
    want = e2.feed(a + c)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert e1.context_tokens == e2.context_tokens


def test_knobs_and_presets_apply_between_steps(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library, preset=1)
    t0 = s.preset.temperature
    s.send(NudgeKnob("temperature", +2))
    s.send(SelectPreset(3, now=True))
    s.tick_once(0)
    assert s.preset.name == library.by_number(3).name
    s.send(NudgeKnob("temperature", +1))
    s.tick_once(0)
    want = library.by_number(3).temperature + 0.05
    assert s.stream.sampler.constraints.temperature == pytest.approx(want)
    assert t0 > 0


@pytest.mark.parametrize("seed", range(40))
def test_random_sessions_leave_no_stuck_note(tiny_model_dir, library, seed):
    rng = random.Random(seed)
    s, sim, clock, sched = make_session(
        tiny_model_dir, library, preset=rng.randint(1, len(library)),
        bpm=rng.choice((90.0, 120.0, 160.0, 200.0)), seed=seed)
    run(s, sim, sched, random_script(rng, clock.bpm, len(library)), check=no_stuck)
    assert not sched.errors
    assert not sched.sounding()
    ons = [x for x in sched.log if x.msg.type == "note_on" and x.msg.velocity > 0]
    offs = [x for x in sched.log if x.msg.type == "note_off"
            or (x.msg.type == "note_on" and x.msg.velocity == 0)]
    assert len(offs) >= len(ons) - sum(1 for x in ons if x.tag == "thru")


def test_real_time_session_with_the_real_scheduler(tiny_model_dir, library):
    """Threads and the real scheduler: an answer arrives, every note ends, nothing after stop."""

    class Out:
        def __init__(self):
            self.sent = []

        def send(self, msg):
            self.sent.append((time.monotonic(), msg))

    out = Out()
    clock = Clock(240.0)
    sched = Scheduler(out, clock)
    engine = Engine(tiny_model_dir, provider="cpu")
    preset = apply_overrides(library.by_number(1), silence_beats=1.0, response_bars=1)
    s = Session(engine, clock, sched, library, preset, options=SessionOptions(seed=1)).start()
    try:
        for p in (60, 64, 67):
            s.submit(mido.Message("note_on", note=p, velocity=90))
            time.sleep(0.05)
            s.submit(mido.Message("note_off", note=p))
        deadline = time.monotonic() + 8.0
        seen = set()
        while time.monotonic() < deadline:
            seen.add(s.snapshot().state)
            if State.RESPONDING in seen and s.snapshot().state in (State.IDLE, State.LISTENING):
                break
            time.sleep(0.01)
    finally:
        s.stop()
        sched.stop()
    stopped = time.monotonic()
    assert State.RESPONDING in seen
    ons = [m for _, m in out.sent if m.type == "note_on" and m.velocity > 0]
    assert ons, "no answer was played"
    open_: set[int] = set()
    for _, m in out.sent:
        if m.type == "note_on" and m.velocity > 0:
            open_.add(m.note)
        elif m.type in ("note_off", "note_on"):
            open_.discard(m.note)
    assert not open_
    time.sleep(0.1)
    assert all(t <= stopped for t, _ in out.sent)


def test_midi_learn_binds_a_cc_and_the_cc_turns_the_knob(tiny_model_dir, library):
    from improv.live.midi_learn import Bindings, Learner
    from improv.live.session_api import Learn

    saved = []
    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.controls.learner, s.controls.on_learned = Learner(Bindings()), saved.append
    s.send(Learn("temperature"))
    s.tick_once(0)
    assert s.controls.learner.armed == "temperature"
    s.submit(mido.Message("control_change", control=74, value=127), sim.t)
    s.tick_once(0)
    assert s.controls.learner.bindings.ccs() == {"temperature": 74}
    assert saved, "the new binding was not handed over to be saved"
    assert s.preset.temperature == pytest.approx(2.0)
    s.submit(mido.Message("control_change", control=74, value=0), sim.t)
    s.tick_once(0)
    assert s.preset.temperature == pytest.approx(0.05)
    assert s.stream.sampler.constraints.temperature == pytest.approx(0.05)
    s.publish(force=True)
    assert s.snapshot().bindings == {"temperature": 74}


def test_pedal_ends_the_call(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library, end_call_cc=67)
    s.submit(mido.Message("note_on", note=60, velocity=80), sim.t)
    s.tick_once(0)
    assert s.state == State.LISTENING
    sim.t += 0.1
    s.submit(mido.Message("control_change", control=67, value=127), sim.t)
    s.tick_once(0)
    assert s.state in (State.THINKING, State.RESPONDING)
    assert s.engine.context_tokens.count(tk.TURN) == 1


def test_following_a_midi_clock_master_that_moves_the_song_position(tiny_model_dir, library):
    """A DAW as master: the answer lands on the master's beats, before and after a jump."""
    from improv.live.clock import MidiClockFollower

    s, sim, clock, sched = make_session(tiny_model_dir, library, humanize_ms=0.0, swing=0.0,
                                        response_start="beat", silence_beats=1.0)
    s.follower = MidiClockFollower(clock)
    spp = 60.0 / 100.0 / 24  # the master plays 100 BPM, the session started at 160
    t0 = sim.t + 0.01
    pulses = [t0 + i * spp for i in range(24 * 40)]

    def master(events):
        events.append((t0 - sim.t, mido.Message("start")))
        events.extend((p - sim.t, mido.Message("clock")) for p in pulses)

    beats = [t0 + i * 24 * spp for i in range(40)]
    script = call_script(100.0, stop_at=0)
    script.events = [(e[0] + 2.0, e[1]) for e in script.events]
    master(script.events)
    script.stop_at = 12.0
    run(s, sim, sched, script, check=no_stuck)
    assert clock.bpm == pytest.approx(100.0, rel=0.01)
    first = next(x for x in machine_notes(sched) if x.msg.type == "note_on")
    assert min(abs(first.t - b) for b in beats) < 0.002, "the answer is off the master's beat"
    # The master jumps back to bar 1: the stream's time must still only run forward.
    before = s.stream.tick
    s.submit(mido.Message("songpos", pos=0), sim.t)
    s.submit(mido.Message("continue"), sim.t)
    s.tick_once(0)
    assert s.now_tick() >= before
    assert s.offset % clock.bar_ticks == 0


def test_picking_another_port_reopens_it_off_the_session_thread(tiny_model_dir, library):
    import threading

    from improv.live.session_api import PortView, SelectPort

    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.port_panel.views = (PortView("in", "keys", True), PortView("out", "synth A", True))
    picked = threading.Event()
    threads = []

    def selector(role, name):
        threads.append(threading.current_thread().name)
        if name == "broken":
            raise OSError("no such device")
        picked.set()
        return PortView(role, name, True)

    s.port_panel.selector = selector
    s.send(SelectPort("out", "synth B"))
    s.tick_once(0)
    assert picked.wait(2.0)
    deadline = time.monotonic() + 2.0
    while s.ports[1].name != "synth B" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.name for p in s.ports] == ["keys", "synth B"]
    assert threads and threads[0] != "MainThread"
    s.send(SelectPort("out", "broken"))
    s.tick_once(0)
    deadline = time.monotonic() + 2.0
    while not any("could not open" in x for x in s.out.lines) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.name for p in s.ports] == ["keys", "synth B"]


def test_overlap_mode_plays_on_and_answers_the_call_played_under_it(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library, mode="overlap",
                                        humanize_ms=0.0, response_bars=2, silence_beats=1.0)
    beat = 60.0 / clock.bpm
    script = call_script(clock.bpm, stop_at=40.0)
    # a second phrase while the first answer plays (it starts a bar or two after the call)
    for i, p in enumerate((72, 74, 76)):  # all inside the first answer (bars 2-3)
        t = 5 * beat + i * beat / 2
        script.events.append((t, mido.Message("note_on", note=p, velocity=70)))
        script.events.append((t + beat / 4, mido.Message("note_off", note=p)))
    run(s, sim, sched, script, check=no_stuck)
    log = s.drain_log()
    assert not any("barge-in" in line for line in log)
    assert len(s.responses) >= 2, log
    ctx_names = [tk.token_name(t) for t in s.engine.context_tokens]
    assert "NOTE_ON_74" in ctx_names


@pytest.mark.parametrize(("name", "value"), [("top_p", 0.0), ("response_bars", 17),
                                             ("bpm", 400.0)])
def test_a_live_knob_out_of_range_is_refused_with_the_registry_words(tiny_model_dir, library,
                                                                     name, value):
    from improv.core import knobs

    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.start(thread=False)
    before = s.controls.value(name)
    s.drain_log()
    s.send(SetKnob(name, value))
    s.tick_once(0)
    with pytest.raises(knobs.KnobError) as e:
        knobs.check(name, value)
    assert s.drain_log() == [str(e.value)]
    assert s.controls.value(name) == before


def test_the_latency_line_reports_ingest_and_what_the_input_dropped(tiny_model_dir, library):
    from improv.commands.jam import latency_line

    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.start(thread=False)
    s.submit(mido.Message("note_on", note=60, velocity=80), t=sim() - 0.003)
    s.inbox.dropped = 7  # as a flood would leave it
    s.tick_once(0.0)
    s.publish(force=True)
    lat = s.snapshot().latency
    assert lat.ingest_median_ms == pytest.approx(3.0) and lat.dropped == 7
    line = latency_line(s.snapshot())
    assert "note in -> fed median 3.00 ms" in line and "dropped 7" in line
