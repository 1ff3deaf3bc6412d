"""The real-time I/O process through its link: schedule, late binding of a followed master,
the watchdog. Each test starts the I/O process (spawn) on JACK virtual ports."""

from __future__ import annotations

import os
import threading
import time

import mido
import pytest

from improv.live.clock import Clock, bpm_to_seconds_per_tick, now
from improv.live.iolink import IOLink

pytestmark = pytest.mark.jack


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def link(clock: Clock, tag: str, **config) -> IOLink:
    """A link that beats while it lives (no session loop calls heartbeat() here)."""
    return IOLink(clock, dict(backend="jack", inp=f"improv in {tag}", out=f"improv out {tag}",
                              virtual_in=True, virtual_out=True, **config), hang_s=None)


def listener(tag: str):
    from bench.trading import Listener

    return Listener(f"improv out {tag}", client=f"heard-{tag}")


def player(backend: mido.Backend, tag: str):
    name = next(n for n in backend.get_output_names() if f"improv in {tag}" in n)
    return backend.open_output(name)


def test_schedule_sends_and_reports_and_stop_ends_the_notes(jack_backend):
    tag = f"rt{os.getpid()}a"
    clock = Clock(120.0)
    sent = []
    io = link(clock, tag)
    io.on_sent = lambda msg, t, tg: sent.append((msg, tg))
    ear = listener(tag)
    try:
        tick = clock.now_tick() + 4
        io.schedule(mido.Message("note_on", note=60, velocity=90), tick, tag="response")
        io.schedule(mido.Message("note_on", note=64, velocity=90), tick + 1, tag="response")
        io.schedule(mido.Message("note_off", note=60), tick + 2, tag="response")
        assert wait_for(lambda: len(ear.copy()) >= 3)
        assert wait_for(lambda: io.stats().sent >= 3, 2.0)
    finally:
        io.stop()
        time.sleep(0.1)
        ear.close()
    got = [m for _, m in ear.copy()]
    assert [(m.type, m.note) for m in got[:3]] == [("note_on", 60), ("note_on", 64),
                                                   ("note_off", 60)]
    assert ("note_off", 64) in [(m.type, getattr(m, "note", None)) for m in got[3:]]
    assert any(m.type == "control_change" and m.control == 123 for m in got)
    assert [m.note for m, tg in sent[:3]] == [60, 64, 60] and sent[0][1] == "response"
    assert not io.process.is_alive()


def test_the_players_notes_reach_the_session_with_the_callbacks_time(jack_backend):
    tag = f"rt{os.getpid()}b"
    io = link(Clock(120.0), tag)
    try:
        out = player(jack_backend, tag)
        before = now()
        out.send(mido.Message("note_on", note=61, velocity=70))
        item = io.inbox.get(timeout=5.0)
        out.close()
    finally:
        io.stop()
    assert item is not None and item[1].note == 61
    assert before <= item[0] <= now()  # one monotonic clock across the processes


def test_a_followed_master_speeding_up_moves_the_queued_notes(jack_backend):
    """Late binding through the I/O process: the follower lives there, the note waits there
    as a tick, and the master's new tempo brings it nearer."""
    tag = f"rt{os.getpid()}c"
    clock = Clock(120.0)
    io = link(clock, tag, follow=True)
    ear = listener(tag)
    master = player(jack_backend, tag)
    stop = threading.Event()
    bpm = [120.0]

    def pulses() -> None:
        t = now()
        while not stop.is_set():
            master.send(mido.Message("clock"))
            t += bpm_to_seconds_per_tick(bpm[0])
            time.sleep(max(0.0, t - now()))

    th = threading.Thread(target=pulses, daemon=True)
    th.start()
    try:
        # The session's clock follows the master through the mappings that come back.
        first = clock.mapping()
        assert wait_for(lambda: clock.mapping() != first, 5.0)
        assert clock.bpm == pytest.approx(120.0, rel=0.05)
        target = clock.now_tick() + 48  # two beats ahead: 1 s at 120 BPM
        bound_then = clock.tick_to_time(target)
        io.schedule(mido.Message("note_on", note=72, velocity=90), target, tag="response")
        time.sleep(0.1)
        bpm[0] = 240.0  # the master doubles its tempo while the note is queued
        assert wait_for(lambda: any(m.type == "note_on" for _, m in ear.copy()), 5.0)
        assert clock.bpm == pytest.approx(240.0, rel=0.05)  # the mapping came back
    finally:
        stop.set()
        th.join()
        io.stop()
        master.close()
        time.sleep(0.1)
        ear.close()
    t_on = next(t for t, m in ear.copy() if m.type == "note_on")
    assert t_on < bound_then - 0.2  # at 120 BPM it would have been a second away


def test_the_watchdog_ends_every_note_when_the_heartbeat_stops(jack_backend):
    tag = f"rt{os.getpid()}d"
    clock = Clock(120.0)
    lost = threading.Event()
    io = IOLink(clock, dict(backend="jack", inp=f"improv in {tag}", out=f"improv out {tag}",
                            virtual_in=True, virtual_out=True), on_lost=lost.set, hang_s=0.3)
    ear = listener(tag)
    try:
        io.heartbeat()
        io.schedule(mido.Message("note_on", note=50, velocity=90), None, tag="response")
        io.schedule(mido.Message("note_on", note=53, velocity=90), None, tag="response")
        assert wait_for(lambda: len(ear.copy()) >= 2)
        # No more heartbeat() calls: the session thread "hangs"; the link stops beating
        # after hang_s and the I/O process's watchdog ends the notes 200 ms later.
        assert lost.wait(5.0)
        assert wait_for(lambda: any(m.type == "control_change" for _, m in ear.copy()), 2.0)
    finally:
        io.stop()
        ear.close()
    got = [m for _, m in ear.copy()]
    offs = {m.note for m in got if m.type == "note_off"}
    assert offs == {50, 53}
    assert not io.process.is_alive() and io.process.exitcode == 3


def test_a_port_that_is_not_there_is_refused_and_the_old_one_stays(jack_backend):
    from improv.live.ports import PortError

    tag = f"rt{os.getpid()}e"
    io = link(Clock(120.0), tag)
    ear = None
    try:
        with pytest.raises(PortError):
            io.select_port("out", "no such synth anywhere")
        ear = listener(tag)  # the virtual port was made again: a new connection
        io.schedule(mido.Message("note_on", note=66, velocity=90), None)
        assert wait_for(lambda: any(m.type == "note_on" for _, m in ear.copy()))
    finally:
        io.stop()
        if ear is not None:
            ear.close()


def test_a_keyboard_unplugged_and_back_is_reported_to_the_session(jack_backend):
    tag = f"rt{os.getpid()}f"
    keyboard = jack_backend.open_output(f"keys {tag}", virtual=True, client_name=f"keys{tag}")
    events: list[tuple[str, str]] = []
    io = IOLink(Clock(120.0), dict(backend="jack", inp=f"keys {tag}", out=f"improv out {tag}",
                                   virtual_in=False, virtual_out=True), hang_s=None)
    io.on_port = lambda event, name, role: events.append((event, name))
    try:
        keyboard.send(mido.Message("note_on", note=62, velocity=60))
        item = io.inbox.get(timeout=5.0)
        assert item is not None and item[1].note == 62
        keyboard.close()
        assert wait_for(lambda: [e for e, _ in events] == ["lost"], 5.0)
        keyboard = jack_backend.open_output(f"keys {tag}", virtual=True,
                                            client_name=f"keys{tag}")
        assert wait_for(lambda: [e for e, _ in events] == ["lost", "back"], 5.0)
    finally:
        io.stop()
        keyboard.close()


class _Wire:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, item: tuple) -> None:
        self.sent.append(item)


def test_two_controllers_on_one_key_do_not_release_each_other_and_a_lost_one_lets_go():
    from improv.live.echo import EchoGuard
    from improv.live.rtio import _Inlet

    wire, thru = _Wire(), []
    inlet = _Inlet(wire, None, thru.append, EchoGuard(None))

    def notes() -> list[tuple[str, int, int]]:
        msgs = [mido.Message.from_bytes(item[2]) for item in wire.sent if item[0] == "i"]
        return [(m.type, m.note, m.velocity) for m in msgs]

    inlet.put(0.0, mido.Message("note_on", note=60, velocity=80))  # keyboard A holds C
    inlet.put(0.1, mido.Message("note_on", note=60, velocity=70))  # keyboard B strikes C
    inlet.put(0.2, mido.Message("note_off", note=60))  # ... and lets go: A still holds it
    assert notes() == [("note_on", 60, 80)] and len(thru) == 1
    inlet.put(0.3, mido.Message("note_on", note=64, velocity=90))
    assert inlet.release_all() == 2  # A unplugged with C and E down
    assert notes()[-2:] == [("note_off", 60, 0), ("note_off", 64, 0)]
    assert [m.type for m in thru[-2:]] == ["note_off", "note_off"] and not inlet.held
    inlet.put(0.4, mido.Message("note_off", note=60))  # a stray release still passes
    assert notes()[-1][:2] == ("note_off", 60)


def test_thru_follows_the_presets_channel(jack_backend):
    tag = f"rt{os.getpid()}t"
    io = link(Clock(120.0), tag, thru_channel=0)
    ear = listener(tag)
    keys = player(jack_backend, tag)
    try:
        def heard_on(channel: int, note: int) -> bool:
            return any(m.type == "note_on" and m.note == note and m.channel == channel
                       for _, m in ear.copy())

        # A fresh connection may miss its first cycle: strike until the first note is heard.
        assert wait_for(lambda: keys.send(mido.Message("note_on", note=60, channel=2))
                        or heard_on(0, 60))
        io.set_thru_channel(5)  # a preset switch to a preset on channel 6
        time.sleep(0.05)
        keys.send(mido.Message("note_on", note=62, channel=2))
        assert wait_for(lambda: heard_on(5, 62))
    finally:
        keys.close()
        io.stop()
        ear.close()


def test_the_echo_guard_knows_its_own_messages_once_and_only_for_a_while():
    from improv.live.echo import EchoGuard

    sent = []

    class Out:
        def send(self, msg):
            sent.append(msg)

    guard = EchoGuard(Out(), window_s=0.05)
    on = mido.Message("note_on", note=60, velocity=90)
    guard.send(on)
    assert sent == [on]
    t = now()
    assert not guard.is_echo(bytes(mido.Message("note_on", note=60, velocity=91).bytes()), t)
    assert guard.is_echo(bytes(on.bytes()), t)  # ours, come back
    assert not guard.is_echo(bytes(on.bytes()), t)  # one echo per message sent
    guard.send(on)
    assert not guard.is_echo(bytes(on.bytes()), t + 0.2)  # too late: the player's own
    assert guard.echoes == 1 and not guard.looped
