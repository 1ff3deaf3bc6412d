"""Voice: the machine's notes as clock-tick deadlines (stream offset off, humanize in ticks)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from improv.live.answer import Answer, Voice
from improv.live.book import MIN_NOTE_TICKS
from improv.live.clock import Clock


@dataclass
class Feel:
    swing: float = 0.0
    humanize_ms: float = 0.0
    channel: int = 2

    @property
    def midi_channel(self) -> int:
        return self.channel - 1

    def shape_velocity(self, v: int) -> int:
        return v


class Log:
    def __init__(self):
        self.items = []

    def schedule(self, msg, tick, *, tag=None):
        self.items.append((msg, tick, tag))


def answer() -> Answer:
    return Answer(start_tick=0, end_tick=96, start=None, call=None, call_start=0)


def test_deadlines_are_clock_ticks_with_the_stream_offset_taken_off():
    log = Log()
    voice = Voice(log, Clock(120.0), seed=1, offset=lambda: 96)
    a = answer()
    voice.note_on(a, 60, 120, 80, Feel())
    voice.note_off(a, 60, 132, Feel())
    (on, t_on, tag), (off, t_off, _) = log.items
    assert (t_on, t_off) == (24, 36) and tag == "response"
    assert on.channel == 1 and off.type == "note_off"


def test_humanize_is_milliseconds_at_the_current_tempo_and_an_off_follows_its_on():
    log = Log()
    clock = Clock(125.0)  # 20 ms a tick
    voice = Voice(log, clock, seed=3)
    a = answer()
    feel = Feel(humanize_ms=40.0)
    shifts = []
    for i in range(200):
        voice.note_on(a, 60, 24 * i, 80, feel)
        voice.note_off(a, 60, 24 * i, feel)  # an off at its on's own tick
        on_tick, off_tick = log.items[-2][1], log.items[-1][1]
        shifts.append(on_tick - 24 * i)
        assert off_tick >= on_tick + MIN_NOTE_TICKS - 1e-12
    sd = (sum(s * s for s in shifts) / len(shifts)) ** 0.5
    assert sd == pytest.approx(0.020 / 0.020, rel=0.3)  # sigma 20 ms = 1 tick at 125 BPM


def test_a_key_struck_again_while_it_sounds_is_ended_first():
    """The stream may close a machine note itself (the player struck its key in overlap
    mode): a new strike of that key sends the missing note-off before it, never a second on."""
    log = Log()
    voice = Voice(log, Clock(120.0), seed=1)
    a = answer()
    voice.note_on(a, 60, 0, 80, Feel())
    voice.note_on(a, 60, 12, 80, Feel())
    kinds = [(m.type, tick) for m, tick, _ in log.items]
    assert kinds == [("note_on", 0), ("note_off", 12), ("note_on", 12)]
    voice.note_off(a, 60, 24, Feel())
    assert [m.type for m, _, _ in log.items].count("note_off") == 2
