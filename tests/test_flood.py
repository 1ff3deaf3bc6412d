"""Never stalled: a note flood and a program-change flood into a session on simulated time.

The model's work takes simulated time here (``simulate.costly``), so a session fed more
than it can digest falls behind its input as a real one does.
"""

from __future__ import annotations

from types import SimpleNamespace

import mido
import pytest

from improv.live.answer import RESPONSE
from improv.live.controls import SWITCH_EVERY_S
from improv.live.recording import SessionRecorder
from improv.live.session_api import State
from improv.live.simulate import Script, costly, run
from tests.test_session import call_script, make_session, no_stuck

RATE = 5000  # note events (on and off) per second
FLOOD_S = 2.0
MS_PER_TOKEN = 0.5  # the tiny model made as slow as a real one on a loaded CPU


def flood(start: float) -> list[tuple[float, mido.Message]]:
    """RATE/2 note-ons a second, each held 3 ms, pitches cycling over five octaves."""
    events = []
    for i in range(int(RATE * FLOOD_S / 2)):
        t, p = start + 2 * i / RATE, 36 + (i * 7) % 61
        events.append((t, mido.Message("note_on", note=p, velocity=64 + i % 60)))
        events.append((t + 0.003, mido.Message("note_off", note=p)))
    return events


def human_note_ons(path) -> int:
    mid = mido.MidiFile(path)
    [human] = [t for t in mid.tracks if t.name == "human"]
    return sum(1 for m in human if m.type == "note_on" and m.velocity > 0)


def flooded(tiny_model_dir, library, tmp_path, shed_after_ms: float) -> SimpleNamespace:
    """The flood, then a call 4 s after it; what came of them."""
    s, sim, clock, sched = make_session(tiny_model_dir, library, humanize_ms=0.0,
                                        response_start="beat", silence_beats=1.0,
                                        predict_handover=False)
    s.options.shed_after_ms = shed_after_ms
    s.recorder = SessionRecorder(tmp_path / "flood.mid", bpm=clock.bpm)
    costly(s.engine, sim, MS_PER_TOKEN)
    beats: list[float] = []  # the session's heartbeats, which the I/O process's watchdog needs
    sched.heartbeat = lambda: beats.append(sim.t)
    events = flood(0.5)
    end = max(t for t, _ in events)
    after = [(t + end + 4.0, m) for t, m in call_script(clock.bpm, stop_at=0).events]
    run(s, sim, sched, Script(events + after, stop_at=end + 10.0), check=no_stuck)
    t0 = sim.t - (end + 10.0)
    s.publish(force=True)
    s.recorder.close()
    ons = [x.t - t0 for x in sched.log if x.tag == RESPONSE and x.msg.type == "note_on"]
    return SimpleNamespace(
        s=s, sched=sched, played=len(events) // 2 + len(after) // 2,
        first=[t - end for t in ons if end < t < end + 4.0],  # after the flood, seconds
        next=[t for t in ons if t > after[-1][0]],  # the answer to the call after it
        gap=max(b - a for a, b in zip(beats, beats[1:], strict=False)))


def test_a_flood_is_recorded_whole_shed_from_the_model_and_answered_within_a_second(
        tiny_model_dir, library, tmp_path):
    f = flooded(tiny_model_dir, library, tmp_path, shed_after_ms=250.0)
    s, sched = f.s, f.sched
    assert human_note_ons(tmp_path / "flood.mid") == f.played, "a played note is not recorded"
    assert s.intake.shed > 0
    assert s.snapshot().latency.dropped == s.intake.dropped >= s.intake.shed
    assert f.first and f.first[0] < 1.0, f"first answer note {f.first[:1]} s after the flood"
    assert f.next, "the call after the flood got no answer"
    assert not s.keys_down and not sched.sounding() and not sched.errors
    assert f.gap < 0.2, "the heartbeat stopped long enough for the I/O watchdog to panic"


def test_a_flood_stalls_the_session_when_nothing_is_shed(tiny_model_dir, library, tmp_path):
    """The same flood with shedding off: the answer comes seconds late (what the shedding
    fixes; if this ever answers in time the flood above no longer tests anything)."""
    f = flooded(tiny_model_dir, library, tmp_path, shed_after_ms=float("inf"))
    assert f.s.intake.shed == 0
    assert not f.first or f.first[0] > 1.0


def test_a_program_change_flood_switches_a_bounded_number_of_times(tiny_model_dir, library):
    s, sim, clock, sched = make_session(tiny_model_dir, library)
    s.options.program_change = True
    n = len(library)
    events = [(0.05 + i * 0.0005, mido.Message("program_change", channel=i % 16,
                                                program=i % n)) for i in range(4000)]
    last = library.by_number((4000 - 1) % n + 1).name
    events += call_script(clock.bpm, stop_at=0).events  # a call played through it
    run(s, sim, sched, Script(sorted(events, key=lambda e: e[0]), stop_at=6.0),
        check=no_stuck)
    assert s.error is None
    assert s.controls.switches <= 2 + 2.0 / SWITCH_EVERY_S  # 2 s of flood, then the last
    assert s.controls.asked is None  # the latest won (it may wait for the next phrase)
    assert (s.controls.pending or s.preset).name == last
    assert s.responses, "the call played through the flood got no answer"


@pytest.mark.parametrize("opt_in", [False, True])
def test_program_changes_switch_presets_only_when_asked_to(tiny_model_dir, library, opt_in):
    s, sim, clock, sched = make_session(tiny_model_dir, library, preset=1)
    s.options.program_change = opt_in
    s.submit(mido.Message("program_change", program=2), sim.t)
    s.tick_once(0)
    want = library.by_number(3 if opt_in else 1).name
    assert s.preset.name == want and s.state == State.IDLE


def test_a_stale_note_is_recorded_but_shed_and_a_fed_key_is_always_released(tiny_model_dir,
                                                                           library):
    s, sim, clock, sched = make_session(tiny_model_dir, library)
    recorded = []
    s.recorder = type("Rec", (), {"add": lambda self, track, m, tick: recorded.append(
        (track, m.type, m.note, m.velocity))})()
    late = sim.t - 0.3  # older than shed_after_ms (250)
    s.submit(mido.Message("note_on", note=60, velocity=80), sim.t)  # fresh: fed
    s.submit(mido.Message("note_on", note=62, velocity=80), late)  # stale: shed
    s.tick_once(0)
    assert s.keys_down == {60} and s.intake.shed == 1
    s.submit(mido.Message("note_off", note=60), late)  # stale, but its key was fed
    s.submit(mido.Message("note_off", note=62), late)  # stale, its key never was
    s.tick_once(0)
    assert not s.keys_down and not s.stream.encoder.sounding
    assert s.intake.shed == 2
    assert recorded == [("human", "note_on", 60, 80), ("human", "note_on", 62, 80),
                        ("human", "note_off", 60, 0), ("human", "note_off", 62, 0)]
    s.publish(force=True)
    assert s.snapshot().latency.dropped == 2
