"""The scheduler's book: order of pending messages, the sounding notes, cancel and panic."""

from __future__ import annotations

import mido

from improv.live.book import ASAP, Book


def on(pitch: int, channel: int = 0) -> mido.Message:
    return mido.Message("note_on", channel=channel, note=pitch, velocity=90)


def off(pitch: int, channel: int = 0) -> mido.Message:
    return mido.Message("note_off", channel=channel, note=pitch)


def test_due_in_tick_order_offs_before_ons_then_push_order():
    b = Book()
    b.push(on(60), 10.0)
    b.push(off(62), 10.0)
    cc = mido.Message("control_change", control=1)
    b.push(cc, 10.0)
    b.push(on(64), 5.0)
    b.push(mido.Message("program_change", program=3), None)
    assert b.next_tick() == ASAP
    assert b.pop_due(4.9)[0][3].type == "program_change"
    assert b.pop_due(4.9) == []
    got = [item[3] for item in b.pop_due(10.0)]
    assert got[0].note == 64 and got[1].type == "note_off" and got[2] is cc
    assert got[3].note == 60 and b.next_tick() is None


def test_sounding_keeps_every_tag_and_cancel_ends_only_its_own():
    b = Book()
    b.sent(on(60), "answer")
    b.sent(on(60), "thru")  # the player's thru note on the same key
    b.sent(on(48, channel=1), "bass")
    b.push(on(67), 20.0, "answer")
    b.push(off(48, channel=1), 30.0, "bass")
    assert b.sounding("answer") == {(0, 60)} and b.sounding("thru") == {(0, 60)}
    offs = b.cancel("answer")
    assert [(m.type, m.channel, m.note) for m in offs] == [("note_off", 0, 60)]
    assert b.pending() == 1 and b.pending("answer") == 0
    for m in offs:
        b.sent(m, "answer")
    assert b.sounding() == {(1, 48)} and b.restruck == 0


def test_a_note_on_for_a_held_key_is_counted():
    b = Book()
    b.sent(on(60), "answer")
    b.sent(on(60), "answer")
    assert b.restruck == 1


def test_panic_ends_every_note_then_cc_123_per_channel_used():
    b = Book()
    b.sent(on(60, 0))
    b.sent(on(62, 2))
    b.sent(mido.Message("control_change", channel=5, control=7))
    b.push(on(70, 3), 50.0)
    msgs = b.panic()
    assert [m.type for m in msgs] == ["note_off"] * 2 + ["control_change"] * 3
    assert [m.channel for m in msgs[2:]] == [0, 2, 5]
    assert all(m.control == 123 for m in msgs[2:]) and b.pending() == 0


def test_the_live_scheduler_and_the_simulator_keep_the_same_book():
    """The soak (SimScheduler) and the live thread drive one Book class, not a copy."""
    from improv.live.clock import Clock
    from improv.live.scheduler import Scheduler
    from improv.live.simulate import SimScheduler

    class Null:
        def send(self, msg):
            pass

    clock = Clock(120.0)
    live = Scheduler(Null(), clock)
    try:
        assert type(live.book) is Book and type(SimScheduler(clock).book) is Book
    finally:
        live.stop()
