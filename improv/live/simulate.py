"""Simulated time for the live path: run a real session faster than real time.

This module owns a stand-in for the scheduler thread that drives the live
scheduler's own :class:`~improv.live.book.Book` (pending messages by clock tick,
sounding notes per tag, cancel and panic note-offs) but sends on a simulated
clock, and a driver that plays a scripted player into a real
:class:`~improv.live.session.Session` (real engine, sampler and encoder) while time
jumps from one event to the next. Tests and ``bench/stuck_notes.py`` use it to
run a thousand randomized sessions in minutes and check that the session ends
every note it starts on its own, before any panic would.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field

import mido

from improv.live.book import Book
from improv.live.scheduler import SchedulerStats


class SimTime:
    """A clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Sent:
    t: float
    msg: mido.Message
    tag: Hashable


class SimScheduler:
    """The live scheduler's book on simulated time: sends when ``advance`` passes a deadline
    (clock ticks, bound to the clock's time when sent, as the live thread does)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.book = Book()
        self.log: list[Sent] = []
        self.closed = False
        self.errors: list[str] = []  # note-ons for a key the machine already held
        self.on_sent = None  # (msg, time, tag) of each message sent, as the live one reports

    def schedule(self, msg: mido.Message, tick: float | None, *, tag: Hashable = None) -> int:
        if self.closed:
            return -1
        return self.book.push(msg, tick, tag)

    def next_deadline(self) -> float | None:
        """The head's time as bound now (seconds of the simulated clock)."""
        tick = self.book.next_tick()
        return None if tick is None else self.clock.tick_to_time(tick)

    def advance(self) -> None:
        for _, _, _, msg, tag in self.book.pop_due(self.clock.now_tick() + 1e-9):
            self._send(msg, tag)

    def _send(self, msg: mido.Message, tag: Hashable) -> None:
        before = self.book.restruck
        self.book.sent(msg, tag)
        t = self.clock.time_fn()
        if self.book.restruck != before:
            self.errors.append(f"note-on for sounding key {(msg.channel, msg.note)} at {t:.3f}")
        self.log.append(Sent(t, msg, tag))
        if self.on_sent is not None:
            self.on_sent(msg, t, tag)

    def cancel(self, tag: Hashable = None) -> None:
        for msg in self.book.cancel(tag):
            self._send(msg, tag)

    def panic(self) -> None:
        for msg in self.book.panic():
            self._send(msg, None)

    def heartbeat(self) -> None:
        pass

    def stop(self) -> None:
        self.panic()
        self.closed = True

    def sounding(self, tag: Hashable = ...) -> set[tuple[int, int]]:
        return self.book.sounding(tag)

    def pending(self, tag: Hashable = ...) -> int:
        return self.book.pending(tag)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(sent=len(self.log), late=0, send_errors=0, callback_drops=0,
                              pending=self.book.pending(), sounding=len(self.book.sounding()),
                              p50_ms=None, p99_ms=None, max_ms=None, realtime=False)


@dataclass
class Script:
    """What a simulated player does: timed messages and intents, then a stop."""

    events: list[tuple[float, object]] = field(default_factory=list)  # (seconds, msg|intent)
    stop_at: float = 10.0


def random_script(rng: random.Random, bpm: float, n_presets: int) -> Script:
    """Calls of random notes, some played into the answer (barge-in), preset switches, a stop."""
    from improv.live.session_api import SelectPreset

    beat = 60.0 / bpm
    t, events = 0.05, []
    for _ in range(rng.randint(1, 4)):
        for _ in range(rng.randint(1, 10)):  # a call, sometimes chords
            start = t + rng.uniform(0, 0.5) * beat
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                pitch = rng.randint(36, 96)
                length = rng.uniform(0.1, 1.5) * beat
                velocity = rng.randint(1, 127)
                events.append((start, mido.Message("note_on", note=pitch, velocity=velocity)))
                events.append((start + length, mido.Message("note_off", note=pitch)))
            t = start + rng.uniform(0.2, 1.0) * beat
        if rng.random() < 0.3:
            events.append((t + rng.uniform(0, 4) * beat,
                           SelectPreset(rng.randint(1, n_presets), now=rng.random() < 0.5)))
        t += rng.uniform(2.0, 10.0) * beat  # silence: the answer comes, maybe interrupted
    events.sort(key=lambda e: e[0])
    return Script(events, stop_at=t + rng.uniform(0, 4) * beat)


def sim_session(engine, library, preset, bpm: float, meter: tuple[int, int] = (4, 4),
                seed: int = 0):
    """A real session on simulated time, started without its thread (drive it with ``run``);
    returns (session, sim time, clock, scheduler)."""
    from improv.live.clock import Clock
    from improv.live.session import Session, SessionOptions

    sim = SimTime()
    clock = Clock(bpm, *meter, time_fn=sim)
    sched = SimScheduler(clock)
    s = Session(engine, clock, sched, library, preset, options=SessionOptions(seed=seed))
    s.start(thread=False)
    return s, sim, clock, sched


def costly(engine, sim: SimTime, ms_per_token: float) -> None:
    """Make ``engine``'s work take simulated time: every token fed or stepped moves ``sim``
    on by ``ms_per_token`` (a session that cannot keep up falls behind its input)."""
    feed, step = engine.feed, engine.step

    def slow_feed(toks):
        sim.t += len(toks) * ms_per_token / 1000.0
        return feed(toks)

    def slow_step(tok):
        sim.t += ms_per_token / 1000.0
        return step(tok)

    engine.feed, engine.step = slow_feed, slow_step


def run(session, sim: SimTime, scheduler: SimScheduler, script: Script, check=None) -> None:
    """Play ``script`` into a started-but-threadless session, jumping time event to event.

    ``check(session, scheduler)`` runs after every step (invariants).
    """
    from improv.live.session_api import Intent

    t0 = sim.t
    events = sorted(script.events, key=lambda e: e[0])
    i = 0
    while sim.t - t0 < script.stop_at:
        while i < len(events) and events[i][0] <= sim.t - t0:
            item = events[i][1]
            if isinstance(item, Intent):
                session.send(item)
            else:  # stamped when played, as a port stamps it (the session may be behind)
                session.submit(item, t0 + events[i][0])
            i += 1
        session.tick_once(0)
        scheduler.advance()
        if check is not None:
            check(session, scheduler)
        nxt = [t0 + script.stop_at, sim.t + 0.005]
        if i < len(events):
            nxt.append(t0 + events[i][0])
        d = scheduler.next_deadline()
        if d is not None:
            nxt.append(d)
        sim.t = max(sim.t + 1e-4, min(nxt))
    session.request_stop()
    scheduler.panic()
