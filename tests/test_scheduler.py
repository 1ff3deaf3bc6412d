"""Scheduler: order under load, no lost messages, no stuck notes on any path."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import mido
import pytest

from improv.live.clock import Clock, now
from improv.live.scheduler import Scheduler


def make(out, **kw) -> Scheduler:
    """A scheduler on a clock of its own at 125 BPM (20 ms a tick)."""
    return Scheduler(out, Clock(125.0), **kw)


def at(sched: Scheduler, t: float | None) -> float | None:
    """The clock tick of time ``t`` (seconds of now()): deadlines are clock ticks."""
    return None if t is None else sched.clock.time_to_tick(t)


def note(sched: Scheduler, pitch: int, velocity: int, on: float, off: float, channel: int = 0,
         tag=None) -> None:
    """A note-on at time ``on`` and its note-off at ``off``, one tag."""
    sched.schedule(mido.Message("note_on", channel=channel, note=pitch, velocity=velocity),
                   at(sched, on), tag=tag)
    sched.schedule(mido.Message("note_off", channel=channel, note=pitch, velocity=0),
                   at(sched, off), tag=tag)


class FakeOutput:
    """Records what was sent and which notes a synth would still be sounding."""

    def __init__(self, fail_every: int = 0) -> None:
        self.sent: list[tuple[mido.Message, float]] = []
        self.notes: set[tuple[int, int]] = set()
        self.fail_every = fail_every
        self.calls = 0

    def send(self, msg: mido.Message) -> None:
        self.calls += 1
        self.sent.append((msg, now()))
        if msg.type == "note_on" and msg.velocity > 0:
            self.notes.add((msg.channel, msg.note))
        elif msg.type in ("note_on", "note_off"):
            self.notes.discard((msg.channel, msg.note))
        elif msg.type == "control_change" and msg.control == 123:
            self.notes = {k for k in self.notes if k[0] != msg.channel}
        if self.fail_every and self.calls % self.fail_every == 0:
            raise OSError("device unplugged")

    def types(self) -> list[str]:
        return [m.type for m, _ in self.sent]


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def hog():
    """A CPU-hogging Python thread, the worst neighbour the scheduler can have."""
    stop = threading.Event()

    def spin():
        x = 0
        while not stop.is_set():
            x += 1

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    yield
    stop.set()
    t.join()


def test_thousands_from_two_threads_none_lost_none_reordered(hog):
    out = FakeOutput()
    sched = make(out)
    start = now()
    past = start - 0.05  # already late when pushed: sent at once, in push order
    base = start + 1.5  # pushing 4,000 messages (next to a CPU hog, on 2 cores) takes less
    pushed: list[tuple[float, int, int, mido.Message]] = []  # (deadline, class, seq, msg)
    lock = threading.Lock()
    n_per_thread = 2000
    pushed_by = [0.0]

    def producer(channel: int) -> None:
        rng = random.Random(channel)
        for i in range(n_per_thread):
            # A 1 ms grid makes ties common. Late ones are all CCs: a late note-on and a
            # late CC that meet in the heap go out CC first, which is not push order.
            late = rng.random() < 0.05
            deadline = past if late else base + rng.randrange(300) / 1000.0
            if not late and rng.random() < 0.3:
                msg = mido.Message("note_on", channel=channel, note=i % 128, velocity=64)
            else:
                msg = mido.Message("control_change", channel=channel, control=1, value=i % 128)
            seq = sched.schedule(msg, at(sched, deadline))
            with lock:
                pushed.append((deadline, 1 if msg.type == "note_on" else 0, seq, msg))
                pushed_by[0] = now()

    threads = [threading.Thread(target=producer, args=(c,)) for c in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pushed_by[0] < base - 0.002, "setup: pushing took too long to test ordering"
    assert wait_for(lambda: len(out.sent) >= 2 * n_per_thread and sched.pending() == 0)
    stats = sched.stats()
    sent = [m for m, _ in out.sent]
    assert len(sent) == 2 * n_per_thread  # none lost, none extra
    # Deadline order; at equal deadlines other messages before note-ons, then push order.
    expected = [m for *_, m in sorted(pushed, key=lambda p: p[:3])]
    assert [id(m) for m in sent] == [id(m) for m in expected]
    n_late = sum(1 for p in pushed if p[0] == past)
    assert n_late > 100
    assert stats.sent == 2 * n_per_thread
    assert n_late <= stats.late <= stats.sent
    assert stats.p50_ms is not None and stats.p99_ms >= stats.p50_ms
    sched.stop()
    assert out.notes == set() and sched.sounding() == set()


def test_note_off_before_note_on_at_equal_deadlines():
    out = FakeOutput()
    with make(out) as sched:
        d = now() + 0.05
        on = mido.Message("note_on", note=60, velocity=90)
        off = mido.Message("note_off", note=60)
        sched.schedule(on, at(sched, d))
        sched.schedule(off, at(sched, d))  # pushed later, sent first
        note(sched, 62, 80, d + 0.01, d + 0.03)
        note(sched, 62, 80, d + 0.03, d + 0.05)  # repeated note: off, then on
        assert wait_for(lambda: len(out.sent) == 6)
    sent = [(m.type, m.note) for m, _ in out.sent[:6]]
    assert sent[:2] == [("note_off", 60), ("note_on", 60)]
    notes62 = [t for t, n in sent if n == 62]
    assert notes62 == ["note_on", "note_off", "note_on", "note_off"]


def test_cancel_ends_sounding_notes_of_a_tag_and_drops_its_pending():
    out = FakeOutput()
    sched = make(out)
    t = now()
    note(sched, 60, 100, t, t + 30, channel=0, tag="answer")
    note(sched, 64, 100, t, t + 30, channel=0, tag="answer")
    note(sched, 48, 100, t, t + 30, channel=1, tag="bass")
    note(sched, 67, 100, t + 0.15, t + 30, channel=0, tag="answer")  # not yet played
    assert wait_for(lambda: len(sched.sounding()) == 3)
    assert out.notes == {(0, 60), (0, 64), (1, 48)}
    sched.cancel("answer")
    assert sched.sounding() == {(1, 48)} and out.notes == {(1, 48)}
    n_sent = len(out.sent)
    time.sleep(0.25)  # past the cancelled note's on deadline
    assert len(out.sent) == n_sent and out.notes == {(1, 48)}
    assert sched.pending() == 1  # the bass note's off
    sched.cancel()
    assert sched.sounding() == set() and out.notes == set() and sched.pending() == 0
    sched.stop()


def test_panic_then_all_notes_off_on_every_channel_used():
    out = FakeOutput()
    sched = make(out)
    t = now()
    for ch, pitch in ((0, 60), (2, 62), (2, 65)):
        note(sched, pitch, 90, t, t + 30, channel=ch)
    sched.schedule(mido.Message("note_on", channel=3, note=70, velocity=50), at(sched, t + 10))
    assert wait_for(lambda: len(sched.sounding()) == 3)
    sched.panic()
    assert out.notes == set() and sched.sounding() == set() and sched.pending() == 0
    tail = [(m.type, m.channel) for m, _ in out.sent[3:]]
    offs = [x for x in tail if x[0] == "note_off"]
    ccs = [x for x in tail if x[0] == "control_change"]
    assert len(offs) == 3 and ccs == [("control_change", 0), ("control_change", 2)]
    assert tail.index(ccs[0]) > max(tail.index(o) for o in offs)  # note-offs first
    assert all(m.control == 123 for m, _ in out.sent if m.type == "control_change")
    sched.stop()


def test_stop_is_idempotent_and_leaves_nothing_sounding():
    out = FakeOutput()
    sched = make(out)
    t = now()
    note(sched, 60, 90, t, t + 30)
    note(sched, 72, 90, t + 20, t + 30)
    assert wait_for(lambda: sched.sounding() == {(0, 60)})
    sched.stop()
    sched.stop()
    assert out.notes == set() and sched.sounding() == set()
    assert not sched._thread.is_alive()
    n = len(out.sent)
    assert sched.schedule(mido.Message("note_on", note=61), None) == -1  # ignored
    note(sched, 62, 90, now(), now() + 1)
    time.sleep(0.05)
    assert len(out.sent) == n


def test_exception_in_send_is_counted_and_the_thread_goes_on():
    out = FakeOutput(fail_every=3)
    sched = make(out)
    t = now()
    for i in range(30):
        sched.schedule(mido.Message("note_on", note=40 + i, velocity=80),
                       at(sched, t + i * 0.001))
    assert wait_for(lambda: out.calls == 30)
    assert sched.send_errors == 10 and "unplugged" in sched.last_error
    assert sched._thread.is_alive()
    # Notes whose send raised may have sounded anyway: they still get their note-off.
    assert len(sched.sounding()) == 30
    sched.schedule(mido.Message("control_change", control=7, value=100), at(sched, now()))
    assert wait_for(lambda: out.calls == 31)
    out.fail_every = 0
    sched.stop()
    assert sched.sounding() == set() and out.notes == set()


def test_on_sent_never_blocks_the_scheduler():
    release = threading.Event()
    got: list[tuple[mido.Message, float]] = []

    def recorder(msg, t, tag):
        release.wait()  # a recorder stuck on disk
        got.append((msg, t))

    out = FakeOutput()
    sched = make(out, on_sent=recorder)
    t = now()
    for i in range(50):
        sched.schedule(mido.Message("control_change", value=i), at(sched, t + i * 0.001))
    assert wait_for(lambda: len(out.sent) == 50)  # sends went on while the recorder hung
    assert got == []
    release.set()
    sched.stop()
    assert [m.value for m, _ in got[:50]] == list(range(50))
    assert [m.control for m, _ in got[50:]] == [123]  # stop's panic is recorded too
    assert [ts for _, ts in got] == sorted(ts for _, ts in got)


def test_asap_messages_go_first_and_stay_out_of_the_timing_stats():
    out = FakeOutput()
    sched = make(out)
    t = now() + 0.05
    sched.schedule(mido.Message("control_change", value=1), at(sched, t))
    sched.schedule(mido.Message("program_change", program=5), None, tag="program")
    sched.schedule(mido.Message("note_on", note=60, velocity=70), None, tag="thru")
    assert wait_for(lambda: len(out.sent) == 3)
    assert [m.type for m, _ in out.sent] == ["program_change", "note_on", "control_change"]
    stats = sched.stats()
    assert stats.sent == 3 and len(sched.errors) == 1 and stats.late <= 1
    sched.cancel("thru")  # a thru note is a sounding note like any other
    assert out.notes == set()
    sched.stop()


def test_latency_compensation_sends_early():
    out = FakeOutput()
    sched = make(out, latency_ms=500)
    deadline = now() + 0.6
    sched.schedule(mido.Message("control_change", value=1), at(sched, deadline))
    assert wait_for(lambda: len(out.sent) == 1)
    assert out.sent[0][1] < deadline  # 500 ms early, so well before the deadline
    assert sched.latency_ms == 500
    sched.stop()


def test_notes_end_at_interpreter_exit_without_stop():
    code = """
import sys, time, mido
from improv.live.clock import Clock, now
from improv.live.scheduler import Scheduler
class Out:
    def send(self, msg):
        print(msg.type, msg.note if hasattr(msg, 'note') else msg.control, flush=True)
s = Scheduler(Out(), Clock(125.0))
s.schedule(mido.Message('note_on', note=60, velocity=100), None)
time.sleep(0.1)
"""  # exits with the note still sounding and no stop()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["note_on 60", "note_off 60", "control_change 123"]


def test_a_tempo_change_moves_the_queued_notes():
    """Late binding: a deadline stays a tick until sent, so a faster tempo brings it nearer."""
    out = FakeOutput()
    clock = Clock(120.0)  # a beat is 0.5 s
    sched = Scheduler(out, clock)
    pushed = now()
    sched.schedule(mido.Message("note_on", note=60, velocity=80), clock.now_tick() + 24)
    bound_then = clock.tick_to_time(clock.now_tick() + 24)
    clock.set_tempo(240.0)  # the rest of the beat now takes half as long
    assert wait_for(lambda: len(out.sent) == 1)
    assert out.sent[0][1] < bound_then - 0.15
    assert out.sent[0][1] - pushed > 0.15  # but not at once: it was bound again, not dropped
    sched.stop()


def test_a_followed_master_speeding_up_moves_the_queued_notes():
    """The MIDI clock follower's re-anchoring reaches notes queued before it."""
    from improv.live.clock import MidiClockFollower, bpm_to_seconds_per_tick

    out = FakeOutput()
    clock = Clock(120.0)
    follower = MidiClockFollower(clock)
    sched = Scheduler(out, clock)
    target = clock.now_tick() + 24
    bound_then = clock.tick_to_time(target)
    sched.schedule(mido.Message("note_on", note=60, velocity=80), target)
    sched.schedule(mido.Message("note_off", note=60), target + 12)
    spt = bpm_to_seconds_per_tick(240.0)  # the master plays twice as fast
    t_end = now()
    for i in range(12):
        follower.feed("clock", t_end - (11 - i) * spt)
    assert follower.bpm == pytest.approx(240.0)
    assert wait_for(lambda: len(out.sent) == 2)
    assert out.sent[0][1] < bound_then - 0.15
    sched.stop()


def test_a_note_too_late_to_play_is_skipped_with_its_note_off_not_burst():
    out = FakeOutput()
    sched = make(out, max_late_ms=50.0)
    try:
        t = now()
        note(sched, 60, 90, t - 0.2, t + 0.05)  # its note-on is 200 ms overdue: a stall
        note(sched, 62, 90, t - 0.02, t + 0.06)  # 20 ms overdue: late, still played
        note(sched, 64, 90, t + 0.03, t + 0.07)
        time.sleep(0.15)
        played = [(m.type, m.note) for m, _ in out.sent]
        assert sorted(played) == [("note_off", 62), ("note_off", 64), ("note_on", 62),
                                  ("note_on", 64)]
        assert not out.notes
        stats = sched.stats()
        assert stats.skipped == 1 and stats.late >= 1
    finally:
        sched.stop()
