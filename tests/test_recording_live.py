"""What a set writes to its recording besides notes: the tempo map, markers, the player's
pedals; thru notes once, as the player's; and thru of the player's CCs, bend and touch."""

from __future__ import annotations

import random

import mido
import pytest

from improv.live.answer import RESPONSE
from improv.live.clock import MidiClockFollower
from improv.live.intake import THRU
from improv.live.marks import machine_track
from improv.live.recording import SessionRecorder
from improv.live.session_api import SelectPreset, SetKnob, TapTempo
from improv.live.simulate import Script, run
from tests.test_session import call_script, make_session, no_stuck


def recorded(tiny_model_dir, library, tmp_path, events, stop_at=10.0, **overrides):
    """A set on simulated time, recorded; returns (file, session, scheduler, clock)."""
    s, sim, clock, sched = make_session(tiny_model_dir, library, **overrides)
    s.recorder = SessionRecorder(tmp_path / "set.mid", bpm=clock.bpm)
    sched.on_sent = machine_track(s.recorder, clock)
    return s, sim, clock, sched, lambda: (run(s, sim, sched, Script(events, stop_at),
                                               check=no_stuck), s.recorder.close())[1]


def track(mid: mido.MidiFile, name: str) -> list[tuple[int, mido.Message]]:
    [t] = [t for t in mid.tracks if t.name == name]
    now, out = 0, []
    for m in t:
        now += m.time
        out.append((now, m))
    return out


def tempo_map(mid: mido.MidiFile) -> list[tuple[int, float]]:
    return [(t, mido.tempo2bpm(m.tempo)) for t, m in track(mid, "tempo") if m.type == "set_tempo"]


def test_tapped_and_turned_tempo_changes_are_in_the_files_tempo_map(tiny_model_dir, library,
                                                                     tmp_path):
    events = call_script(160.0, stop_at=0).events
    events += [(3.0, TapTempo()), (3.0 + 60 / 145, TapTempo()), (6.0, SetKnob("bpm", 100.0))]
    s, sim, clock, sched, play = recorded(tiny_model_dir, library, tmp_path, events)
    t0 = sim.t
    path = play()
    tempos = tempo_map(mido.MidiFile(path))
    assert [round(b) for _, b in tempos] == [160, 145, 100]
    # where the tap took effect: the second tap, on the set's clock (480 ticks a quarter)
    tap_tick = (3.0 + 60 / 145) * 160 / 60 * 480
    assert tempos[1][0] == pytest.approx(tap_tick, abs=2)
    # ... and what the file says matches the clock: 3 s + 60/145 s of 160 BPM, then 145
    assert tempos[2][0] == pytest.approx(tap_tick + (6.0 - 3.0 - 60 / 145) * 145 / 60 * 480,
                                         abs=2)
    assert sim.t > t0


def test_a_followed_master_writes_its_tempo_not_every_pulse(tiny_model_dir, library, tmp_path):
    rng = random.Random(3)
    pulse = 60.0 / 100.0 / 24  # a master at 100 BPM, jittered by +-1 ms
    events = [(0.01, mido.Message("start"))]
    events += [(0.02 + i * pulse + rng.uniform(-0.001, 0.001), mido.Message("clock"))
               for i in range(24 * 8)]
    s, sim, clock, sched, play = recorded(tiny_model_dir, library, tmp_path, events,
                                          stop_at=5.0)
    s.follower = MidiClockFollower(clock)
    tempos = tempo_map(mido.MidiFile(play()))
    assert 2 <= len(tempos) <= 8, tempos  # each of 192 pulses moves the tempo a hair
    assert tempos[0][1] == pytest.approx(160.0)
    assert tempos[-1][1] == pytest.approx(100.0, abs=1.0)


def test_a_preset_switch_is_a_marker(tiny_model_dir, library, tmp_path):
    events = [(1.0, SelectPreset(3, now=True))]
    s, sim, clock, sched, play = recorded(tiny_model_dir, library, tmp_path, events,
                                          stop_at=3.0)
    markers = [(t, m.text) for t, m in track(mido.MidiFile(play()), "tempo")
               if m.type == "marker"]
    assert markers == [(pytest.approx(1.0 * 160 / 60 * 480, abs=2),
                        f"preset {library.by_number(3).name}")]


def test_thru_notes_are_recorded_once_as_the_players(tiny_model_dir, library, tmp_path):
    s, sim, clock, sched, play = recorded(tiny_model_dir, library, tmp_path,
                                          call_script(160.0, stop_at=0).events, stop_at=12.0)
    s.options.thru = True
    mid = mido.MidiFile(play())
    thru_ons = [x for x in sched.log if x.tag == THRU and x.msg.type == "note_on"]
    machine_ons = [x for x in sched.log if x.tag == RESPONSE and x.msg.type == "note_on"]
    assert len(thru_ons) == 5 and machine_ons, "no thru or no answer: nothing tested"

    def ons(name):
        return [m.note for _, m in track(mid, name) if m.type == "note_on" and m.velocity]

    assert ons("human") == [60, 62, 64, 65, 67]
    assert ons("machine") == [x.msg.note for x in machine_ons]


def test_thru_passes_the_players_pedals_bend_and_touch_and_records_them(tiny_model_dir,
                                                                        library, tmp_path):
    from improv.live.midi_learn import Bindings, Learner

    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.recorder = SessionRecorder(tmp_path / "set.mid", bpm=clock.bpm)
    s.options.thru, s.options.control_channel = True, 15
    s.controls.learner = Learner(Bindings())
    s.controls.learner.bindings.bind("temperature", 74, None)
    played = [mido.Message("control_change", channel=2, control=64, value=127),
              mido.Message("control_change", channel=2, control=66, value=100),
              mido.Message("control_change", channel=2, control=67, value=90),
              mido.Message("pitchwheel", channel=2, pitch=-2000),
              mido.Message("aftertouch", channel=2, value=50),
              mido.Message("polytouch", channel=2, note=60, value=40)]
    kept = [mido.Message("control_change", channel=2, control=74, value=3),  # a knob's
            mido.Message("control_change", channel=2, control=123),  # a panic
            mido.Message("control_change", channel=15, control=64, value=127)]  # control ch.
    for batch in (played, kept):
        for m in batch:
            s.submit(m, sim.t)
        s.tick_once(0)
        sched.advance()
    out = [x.msg for x in sched.log if x.tag == THRU]
    ch = s.preset.midi_channel
    assert out == [m.copy(channel=ch) for m in played]
    human = [m for _, m in track(mido.MidiFile(s.recorder.close()), "human")
             if not m.is_meta]
    assert [m.copy(time=0) for m in human] == [m.copy(channel=0) for m in played]


def test_a_meter_change_is_in_the_file(tiny_model_dir, library, tmp_path):
    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.recorder = SessionRecorder(tmp_path / "set.mid", bpm=clock.bpm)
    sim.t += 3.0  # two bars at 160 BPM
    clock.set_meter(3, 4)
    s.tick_once(0)
    meters = [(t, (m.numerator, m.denominator)) for t, m in
              track(mido.MidiFile(s.recorder.close()), "tempo") if m.type == "time_signature"]
    assert clock.bar_origin == 2 * 96  # the bar line it changed on: bar 3 (24 ticks a quarter)
    assert meters == [(0, (4, 4)), (2 * 4 * 480, (3, 4))]
