"""JACK's period and the half-period compensation the I/O process derives from it."""

from __future__ import annotations

import mido
import pytest

from improv.live.clock import Clock, ClockSender, MidiClockFollower
from improv.live.jack_info import half_period_ms, jack_period_s


class FakeTime:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_period_is_read_from_the_running_server(jack_server):
    # the fixture's server runs 64 frames at 48 kHz (or the one already running: any period)
    period = jack_period_s()
    assert period is not None and 0.0 < period < 0.1
    if jack_server is not None:
        assert period == pytest.approx(64 / 48000)
    assert half_period_ms("UNIX_JACK") == pytest.approx(period * 1e3 / 2)


@pytest.mark.parametrize("api", ["LINUX_ALSA", "MACOSX_CORE", "WINDOWS_MM", None])
def test_no_compensation_off_jack(api):
    assert half_period_ms(api) == 0.0


def test_the_follower_takes_pulses_as_earlier_by_its_offset():
    spt = 60.0 / (120 * 24)
    clocks = []
    for offset in (0.0, 0.0007):
        clock = Clock(100, time_fn=FakeTime(10.0))
        f = MidiClockFollower(clock, offset_s=offset)
        f.feed("start", 10.0)
        for k in range(100):
            f.feed("clock", 10.01 + k * spt)
        clocks.append(clock)
    plain, shifted = clocks
    assert shifted.bpm == pytest.approx(120, rel=1e-6)
    for tick in (99, 120, 200):  # the whole grid moves, not just the last pulse
        assert plain.tick_to_time(tick) - shifted.tick_to_time(tick) == pytest.approx(0.0007)


def test_the_clock_sender_sends_each_pulse_its_lead_early():
    ft = FakeTime(0.0)
    clock = Clock(120, time_fn=ft, tick=0)
    sent: list[float] = []
    sender = ClockSender(clock, lambda m: sent.append(ft.t), realtime=False, lead_s=0.002)
    # no real sleeping: a wait ends on the pulse's send time (past the spin before it)
    sender._quit.wait = lambda s: (setattr(ft, "t", ft.t + s + sender.SPIN) or False)
    original = sender._send

    def send(msg: mido.Message) -> None:
        original(msg)
        if len(sent) >= 5:
            sender._quit.set()

    sender._send = send
    sender._run()
    spt = clock.seconds_per_tick
    for k, t in enumerate(sent, start=1):  # pulse k's time is k ticks from 0, minus the lead
        assert t == pytest.approx(k * spt - 0.002, abs=1e-9)
