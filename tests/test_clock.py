"""Clock: tick/second conversion, tempo, tap, meter; following and sending MIDI beat clock."""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from fractions import Fraction

import mido
import pytest

from improv.live.clock import Clock, ClockSender, MidiClockFollower
from improv.live.ports import MidiInput, MidiOutput


class FakeTime:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_tick_time_round_trip():
    ft = FakeTime(100.0)
    clock = Clock(120, time_fn=ft)  # 2 beats/s = 48 ticks/s
    assert clock.tick_to_time(0) == 100.0
    assert clock.tick_to_time(48) == pytest.approx(101.0)
    assert clock.time_to_tick(100.5) == pytest.approx(24.0)
    assert clock.nearest_tick(100.51) == 24
    assert clock.nearest_tick(100.52) == 25
    ft.t = 102.0
    assert clock.now_tick() == pytest.approx(96.0)
    for tick in (0.0, 1.5, 96.0, 12345.25):
        assert clock.time_to_tick(clock.tick_to_time(tick)) == pytest.approx(tick, abs=1e-9)


def test_tempo_change_reanchors_without_jump():
    ft = FakeTime(10.0)
    clock = Clock(120, time_fn=ft)
    ft.t = 11.0
    before = clock.now_tick()
    clock.set_tempo(60)
    assert clock.now_tick() == pytest.approx(before)  # no jump at the change
    assert clock.tick_to_time(48) == pytest.approx(11.0)  # the past stays where it was
    ft.t = 12.0
    assert clock.now_tick() == pytest.approx(before + 24)  # 60 BPM: 24 ticks per second
    assert clock.bpm == pytest.approx(60)
    clock.set_position(0)
    assert clock.now_tick() == 0.0
    with pytest.raises(ValueError, match="out of range"):
        clock.set_tempo(5)


def test_tap_tempo_averages_and_resets_after_a_pause():
    ft = FakeTime(0.0)
    clock = Clock(100, time_fn=ft)
    assert clock.tap(0.0) is None
    bpm = None
    for t in (0.5, 1.0, 1.5, 2.0):
        bpm = clock.tap(t)
    assert bpm == pytest.approx(120)
    assert clock.bpm == pytest.approx(120)
    # Jittery taps average out: intervals 0.45 and 0.55 -> 0.5.
    assert clock.tap(2.45) is not None and clock.tap(3.0) == pytest.approx(120, rel=0.02)
    # A long pause starts again: the first tap after it sets nothing.
    assert clock.tap(10.0) is None
    assert clock.tap(10.4) == pytest.approx(150)


def test_drift_free_over_three_hours():
    ft = FakeTime(5000.0)
    clock = Clock(137, time_fn=ft)
    start = ft.t
    hours3 = 3 * 3600
    # Re-anchor once a second at the same tempo, and switch tempo once a minute:
    # nothing may accumulate.
    exact = Fraction(0)
    bpm = 137
    for second in range(1, hours3 + 1):
        ft.t = start + second
        exact += Fraction(bpm * 24, 60)
        if second % 60 == 0:
            bpm = 91 if bpm == 137 else 137
        clock.set_tempo(bpm)
    assert clock.now_tick() == pytest.approx(float(exact), abs=1e-6)
    # Conversions far out agree with each other to well under a microsecond.
    tick = clock.now_tick() + 1e5
    assert clock.time_to_tick(clock.tick_to_time(tick)) == pytest.approx(tick, abs=1e-6)
    # And a clock left alone is exactly linear after three hours.
    ft.t = 0.0
    plain = Clock(120, time_fn=ft)
    assert plain.time_to_tick(hours3) == pytest.approx(3 * 3600 * 48, abs=1e-9)
    assert plain.tick_to_time(3 * 3600 * 48) == pytest.approx(hours3, abs=1e-9)


def test_meter_beats_and_bars():
    ft = FakeTime(0.0)
    clock = Clock(120, time_fn=ft)
    assert clock.bar_ticks == 96 and clock.beat_ticks == 24
    assert clock.next_bar(0) == 0 and clock.next_bar(0.5) == 96 and clock.next_bar(96) == 96
    assert clock.next_beat(25) == 48 and clock.next_beat(48.0) == 48
    assert clock.next_bar(96.0000000001) == 96  # a float hair past a line is on it
    assert clock.bar_start(150) == 96 and clock.bar_start(-1) == -96
    ft.t = 2.5  # tick 120, in the second bar
    clock.set_meter(3, 4)
    assert clock.bar_origin == 96 and clock.bar_ticks == 72
    assert clock.next_bar(121) == 168
    clock.set_meter(6, 8, origin=0)
    assert clock.beat_ticks == 12 and clock.bar_ticks == 72 and clock.next_beat(13) == 24
    with pytest.raises(ValueError, match="not usable"):
        clock.set_meter(4, 3)


def pulses(bpm: float, n: int, t0: float, rng: random.Random, jitter: float = 0.002):
    """Pulse arrival times with uniform jitter and an occasional 8 ms hiccup."""
    spt = 60.0 / (bpm * 24)
    out = []
    for i in range(n):
        j = rng.uniform(-jitter, jitter) + (0.008 if rng.random() < 0.03 else 0.0)
        out.append(t0 + i * spt + j)
    return out


@pytest.mark.parametrize("bpm", [90, 140])
def test_follower_estimates_tempo_through_jitter(bpm):
    rng = random.Random(bpm)
    ft = FakeTime(50.0)
    clock = Clock(120, time_fn=ft)
    f = MidiClockFollower(clock)
    f.feed("start", 50.0)
    times = pulses(bpm, 200, 50.01, rng)
    for t in times:
        f.feed("clock", t)
    assert f.bpm == pytest.approx(bpm, rel=0.01)
    assert clock.bpm == pytest.approx(bpm, rel=0.01)
    # Positions follow the master: pulse k stands for tick k (within jitter).
    spt = 60.0 / (bpm * 24)
    true_last = 50.01 + 199 * spt
    assert clock.time_to_tick(true_last) == pytest.approx(199, abs=0.5)
    assert f.running and not f.master_stopped and f.receiving(times[-1] + 0.01)


def test_follower_start_stop_continue_songpos():
    ft = FakeTime(0.0)
    clock = Clock(120, time_fn=ft)
    f = MidiClockFollower(clock)
    spt = 60.0 / (100 * 24)
    t = 1.0
    for _ in range(30):  # a master sends clock while stopped: tempo, no position
        f.feed("clock", t)
        t += spt
    assert f.bpm == pytest.approx(100, rel=1e-6) and not f.running
    f.feed_message(mido.Message("start"), t)
    for _ in range(48):
        f.feed("clock", t)
        t += spt
    assert f.position == 48
    assert clock.time_to_tick(t - spt) == pytest.approx(47, abs=1e-6)
    f.feed("stop", t)
    assert f.master_stopped and not f.running
    for _ in range(10):  # pulses while stopped don't move the song position
        f.feed("clock", t)
        t += spt
    assert f.position == 48
    f.feed_message(mido.Message("songpos", pos=16), t)  # 16 sixteenths = tick 96
    assert f.position == 96 and clock.time_to_tick(t) == pytest.approx(96)
    f.feed("continue", t)
    assert f.running and not f.master_stopped
    f.feed("clock", t)
    assert clock.time_to_tick(t) == pytest.approx(96, abs=1e-6)
    assert f.position == 97
    # A long silence restarts the fit rather than mixing old pulses in.
    t += 2.0
    f.feed("clock", t)
    assert len(f._fit) == 1 and not f.receiving(t + 1.0)


def test_clock_sender_sends_start_pulses_stop():
    sent: list[str] = []
    clock = Clock(300, tick=-10)  # 120 pulses per second, a bar line 10 ticks away
    sender = ClockSender(clock, lambda m: sent.append(m.type)).open()
    sender.start()
    deadline = time.monotonic() + 5.0
    while sent[sent.index("start") if "start" in sent else len(sent) :].count("clock") < 20:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    sender.stop()
    while "stop" not in sent and time.monotonic() < deadline:
        time.sleep(0.01)
    sender.close()
    assert "start" in sent and "stop" in sent
    i = sent.index("start")
    assert sent[i + 1] == "clock" and sent.index("stop") > i
    assert set(sent) == {"clock", "start", "stop", "songpos"}
    assert sent[i - 1] == "songpos" and sent[sent.index("stop") + 1] == "songpos"


def test_clock_sender_resumes_with_song_position_and_continue_and_stops_when_closed():
    sent: list[mido.Message] = []
    clock = Clock(300, tick=-2)  # 120 pulses per second
    sender = ClockSender(clock, sent.append).open()

    def wait(pred) -> None:
        deadline = time.monotonic() + 5.0
        while not pred() and time.monotonic() < deadline:
            time.sleep(0.01)

    def types() -> list[str]:
        return [m.type for m in list(sent)]

    sender.start()
    wait(lambda: types().count("clock") > 60 and "start" in types())
    sender.stop()
    wait(lambda: "stop" in types())
    stopped_at = [m.pos for m in sent if m.type == "songpos"][-1]
    pulses = types()[types().index("start"):types().index("stop")].count("clock")
    assert abs(stopped_at - pulses // 6) <= 1 and stopped_at > 0  # sixteenths since Start
    sender.resume()
    wait(lambda: "continue" in types())
    i = types().index("continue")
    assert sent[i - 1].type == "songpos" and sent[i - 1].pos == stopped_at
    wait(lambda: types()[i:].count("clock") > 12)
    sender.close()  # a slave must not keep rolling after the set
    assert types()[-2:] == ["stop", "songpos"] and sent[-1].pos > stopped_at


@pytest.mark.jack
def test_follow_midi_clock_over_jack(jack_backend):
    """A master sends clock at 90 then 140 BPM through JACK to an improv input."""
    name = f"improv in clock-test-{os.getpid()}"
    inp = MidiInput(name, backend=jack_backend, virtual=True)
    out = MidiOutput(name, backend=jack_backend)  # opening by name connects to it
    follower = MidiClockFollower(Clock(120))
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            item = inp.queue.get(timeout=0.05)
            if item is not None:
                follower.feed_message(item[1], item[0])

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    master = Clock(90)
    sender = ClockSender(master, out.send).open()
    sender.start()
    try:
        # Start comes on the master's next bar line (up to 2.7 s at 90 BPM); measure after it,
        # or a Start landing mid-measurement restarts the fit and the test depends on the phase.
        deadline = time.monotonic() + 5.0
        while not follower.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.running, "the master's Start never arrived"
        for bpm in (90, 140):
            master.set_tempo(bpm)
            time.sleep(1.4)  # > 48 pulses at 90 BPM (36/s): the window holds only this tempo
            # Estimates spread over more than one window (48 pulses): a JACK cycle that the
            # dummy driver loses (a pulse or two gone, so 2% slower for one window) moves
            # fewer than half of them.
            estimates = []
            for _ in range(12):
                time.sleep(0.15)
                estimates.append(follower.bpm)
            assert None not in estimates
            assert statistics.median(estimates) == pytest.approx(bpm, rel=0.01), (
                f"{estimates}; pulses sent {sender.sent}, heard {follower.pulses}")
        assert follower.running and follower.pulses > 48 * 2
    finally:
        sender.close()
        stop.set()
        consumer.join()
        out.close()
        inp.close()
