"""The click and the count-in on simulated time: a real session, its clicks' ticks and times.

The same over JACK, with `improv jam` in its own process: tests/test_click_jack.py.
"""

from __future__ import annotations

import mido
import pytest

from improv.core.presets import apply_overrides
from improv.live.answer import RESPONSE
from improv.live.click import BEAT_NOTE, CHANNEL, CLICK, DOWNBEAT_NOTE, LEAD_BEATS
from improv.live.engine import Engine
from improv.live.marks import machine_track
from improv.live.session_api import SetClick, State
from improv.live.simulate import Script, run, sim_session


def session(model_dir, library, bpm=120.0, **overrides):
    engine = Engine(model_dir, provider="cpu", background=False)
    p = apply_overrides(library.by_number(1), humanize_ms=0.0, swing=0.0, silence_beats=1.0,
                        response_start="bar", **overrides)
    return sim_session(engine, library, p, bpm)


def clicks(sched) -> list:
    return [x for x in sched.log if x.tag == CLICK and x.msg.type == "note_on"]


def phrase(start_s: float, beat_s: float, pitches=(60, 62, 64, 65)) -> list:
    events = []
    for i, p in enumerate(pitches):
        events.append((start_s + i * beat_s / 2, mido.Message("note_on", note=p, velocity=80)))
        events.append((start_s + (i + 0.8) * beat_s / 2, mido.Message("note_off", note=p)))
    return events


def test_count_in_clicks_two_bars_on_the_beats_then_listens(tiny_model_dir, library):
    s, sim, clock, sched = session(tiny_model_dir, library, count_in=2)
    t0, beat_s = sim.t, 60.0 / clock.bpm
    s.tick_once(0)  # the loop's first turn starts the count-in
    click = s.click
    assert click.counting() and click.count_from % clock.bar_ticks == 0
    assert click.listen_at == click.count_from + 2 * clock.bar_ticks
    listen_s = clock.tick_to_time(click.listen_at) - t0
    # played during the count-in: heard, but no call; then a call after it
    events = phrase(listen_s - 3 * beat_s, beat_s) + phrase(listen_s + 0.02, beat_s)
    snaps = []
    run(s, sim, sched, Script(events, stop_at=listen_s + 8 * beat_s),
        check=lambda sess, _: snaps.append(sess.snapshot()))
    got = clicks(sched)
    # exactly two bars of clicks, each on its beat's tick, the downbeats accented; none after
    assert len(got) == 8, [x.t for x in got]
    for i, x in enumerate(got):
        tick = click.count_from + i * clock.beat_ticks
        assert x.t == pytest.approx(clock.tick_to_time(tick), abs=1e-9)
        assert x.msg.channel == CHANNEL
        assert x.msg.note == (DOWNBEAT_NOTE if i % 4 == 0 else BEAT_NOTE)
    offs = [x for x in sched.log if x.tag == CLICK and x.msg.type == "note_off"]
    assert len(offs) == 8 and not sched.sounding(CLICK)
    # the count-in's notes started no call: the first answer follows the call after it
    assert s.responses, "the call after the count-in got no answer"
    assert s.responses[0]["call_bar"] == click.listen_at
    assert s.discarded == 0
    first = next(x for x in sched.log if x.tag == RESPONSE and x.msg.type == "note_on")
    assert first.t > clock.tick_to_time(click.listen_at)
    # the stage saw the count-in, and its countdown ended on the listening line
    counting = [x for x in snaps if x.count_in_until is not None]
    assert counting and counting[0].count_in_until == click.listen_at / clock.beat_ticks
    assert counting[0].countdown == (click.count_from / clock.beat_ticks,
                                     click.listen_at / clock.beat_ticks)
    assert all(x.state == State.IDLE for x in counting), "a note in the count-in is no call"


def test_the_click_follows_a_tempo_change_queued_clicks_included(tiny_model_dir, library):
    s, sim, clock, sched = session(tiny_model_dir, library, click=True)
    changed = []

    def check(sess, _):
        # change the tempo while a click's note-on is queued: it must land on the new beat
        if not changed and sim.t - t0 >= 1.0 and sched.pending(CLICK) >= 2:
            clock.set_tempo(90.0)
            changed.append(sim.t)

    t0 = sim.t
    run(s, sim, sched, Script([], stop_at=4.0), check=check)
    after = [x.t for x in clicks(sched) if x.t > changed[0]]
    assert len(after) >= 3
    for t in after:  # on beat lines of the new mapping, the queued click too
        tick = clock.time_to_tick(t)
        assert tick == pytest.approx(round(tick / clock.beat_ticks) * clock.beat_ticks, abs=1e-6)
    gaps = {round(b - a, 6) for a, b in zip(after, after[1:], strict=False)}
    assert gaps == {round(60.0 / 90.0, 6)}
    assert after[0] - changed[0] < 60.0 / 90.0, "the click queued before the change sounded"


def test_the_click_follows_a_midi_clock_master(tiny_model_dir, library):
    from improv.live.clock import MidiClockFollower

    s, sim, clock, sched = session(tiny_model_dir, library, bpm=160.0, click=True)
    s.follower = MidiClockFollower(clock)
    spp = 60.0 / 100.0 / 24  # the master plays 100 BPM
    t0 = sim.t + 0.01
    events = [(t0 - sim.t, mido.Message("start"))]  # with its first pulse
    events += [(t0 + i * spp - sim.t, mido.Message("clock")) for i in range(24 * 12)]
    run(s, sim, sched, Script(events, stop_at=6.0))
    beats = [t0 + i * 24 * spp for i in range(12)]
    late = [x.t for x in clicks(sched) if x.t > t0 + 2.0]  # once the fit has settled
    assert len(late) >= 4
    for t in late:
        assert min(abs(t - b) for b in beats) < 0.002, "a click off the master's beat"


def test_the_click_turns_on_and_off_live_and_stays_off_the_recording(tiny_model_dir, library):
    s, sim, clock, sched = session(tiny_model_dir, library)
    recorded = []

    class Recorder:
        def add(self, track, msg, tick):
            recorded.append(msg)

    sched.on_sent = machine_track(Recorder(), clock)
    t0 = sim.t
    run(s, sim, sched, Script([(0.5, SetClick(True)), (2.5, SetClick(False))], stop_at=4.0))
    times = [x.t - t0 for x in clicks(sched)]
    beat_s = 60.0 / clock.bpm
    assert times and times[0] >= 0.5 and times[-1] <= 2.5 + LEAD_BEATS * beat_s + 1e-9
    assert len(times) >= 3  # two seconds at 120 BPM: four beats, less what was queued
    assert not sched.sounding(CLICK) and not recorded, "the click is not the machine's music"


def test_a_masters_start_during_the_count_in_starts_it_again(tiny_model_dir, library):
    from improv.live.clock import MidiClockFollower

    s, sim, clock, sched = session(tiny_model_dir, library, count_in=2)
    s.follower = MidiClockFollower(clock)
    s.tick_once(0)
    assert s.click.counting()
    spp = 60.0 / 100.0 / 24  # the DAW plays 100 BPM from its Start, a second in
    t0 = sim.t + 1.0
    events = [(t0 - sim.t, mido.Message("start"))]
    events += [(t0 + i * spp - sim.t, mido.Message("clock")) for i in range(24 * 16)]
    run(s, sim, sched, Script(events, stop_at=1.0 + 13 * 0.6))  # past its line (12 beats)
    bar = clock.bar_ticks
    # counted in again from the master's next bar line (its first is already under way)
    assert (s.click.count_from, s.click.listen_at) == (bar, 3 * bar)
    since = [x for x in clicks(sched) if x.t >= t0]
    beats = [t0 + i * 24 * spp for i in range(16)]
    assert since[0].msg.note == DOWNBEAT_NOTE
    assert min(abs(since[0].t - b) for b in beats) < 0.002
    assert len(since) == 8, "two bars, then the click is off"
    # once over, a jump back does not count in again
    assert s.click.over and not s.click.counting()
    clock.set_position(0)
    s.tick_once(0)
    assert not s.click.counting() and s.click.listen_at == 3 * bar


def test_a_barge_in_and_a_preset_switch_leave_the_click_alone(tiny_model_dir, library):
    from improv.live.session_api import SelectPreset

    s, sim, clock, sched = session(tiny_model_dir, library, click=True, response_bars=4,
                                   mode="call_response")
    beat_s = 60.0 / clock.bpm
    events = phrase(0.1, beat_s)  # a call; its answer comes on the next bar line
    events += [(4.2, mido.Message("note_on", note=72, velocity=90)),  # into the answer
               (4.4, mido.Message("note_off", note=72)), (5.0, SelectPreset(2, now=True))]
    run(s, sim, sched, Script(events, stop_at=7.0))
    assert s.responses
    assert any(x.tag == RESPONSE for x in sched.log), "the answer never sounded"
    times = [x.t for x in clicks(sched)]
    gaps = {round(b - a, 6) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {round(beat_s, 6)}, "a click went missing"
    assert times[-1] - times[0] >= 6.0 and s.preset.click, "the switch kept the click on"
