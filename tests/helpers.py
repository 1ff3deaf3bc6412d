"""What tests share: tiny model flags for ``improv train``, random pieces, a tiny corpus on
disk (the one-thread fixture they use is in conftest.py), and a scripted player on a
session's bar grid in simulated time."""

from __future__ import annotations

import random
import time
from pathlib import Path

import mido

from improv.core import tokens as tk
from improv.core.presets import apply_overrides
from improv.learn import dataset
from improv.live.answer import RESPONSE
from improv.live.simulate import Script, run, sim_session

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "improv-base"
Q = tk.TICKS_PER_QUARTER
BAR = 4 * Q
BPM = 120.0


def tiny_flags(context: int) -> list[str]:
    """``improv train`` flags for a 2-layer d32 model that trains in moments."""
    flags = "--d-model 32 --n-layer 2 --n-head 2 --d-ff 64 --batch 4 --threads 1 --no-progress"
    return [*flags.split(), "--context", str(context)]


def random_piece(rng: random.Random, style: int, n_notes: int) -> list[int]:
    """Tokens of ``n_notes`` random notes, overlapping at times, after the STYLE token."""
    t, events = 0, []
    for _ in range(n_notes):
        p, d = rng.randint(48, 84), rng.choice([6, 12, 24])
        events += [tk.Event(t, p, rng.randint(40, 110)), tk.Event(t + d, p, 0)]
        t += rng.choice([6, 12, 24])
    return tk.encode_events(events, style=style)


def write_corpus(out: Path, n_train: int, n_val: int, n_notes: int, seed: int = 0) -> Path:
    """Train pieces p0.. and val pieces v0.. of random notes, styles cycling over 0..4."""
    rng = random.Random(seed)
    train = [(f"p{i}", i % 5, random_piece(rng, i % 5, n_notes)) for i in range(n_train)]
    dataset.write_split(out, "train", train)
    val = [(f"v{i}", i % 5, random_piece(rng, i % 5, n_notes)) for i in range(n_val)]
    dataset.write_split(out, "val", val)
    return out


class Player:
    """A scripted player on a session's bar grid: notes in ticks from a bar line."""

    def __init__(self, engine, library, preset="folk song", seed=0, **overrides):
        p = apply_overrides(library.get(preset), humanize_ms=0.0, swing=0.0, **overrides)
        self.session, self.sim, self.clock, self.sched = sim_session(engine, library, p, BPM,
                                                                     seed=seed)
        # The first bar line after the stream's start: tick 0 of the script.
        self.origin = self.clock.next_bar(self.clock.now_tick() + 1)
        self.events: list[tuple[float, mido.Message]] = []

    def seconds(self, tick: float) -> float:
        return self.clock.tick_to_time(self.origin + tick) - self.sim.t

    def note(self, start: int, end: int, pitch: int, velocity: int = 80) -> Player:
        self.events.append((self.seconds(start), mido.Message("note_on", note=pitch,
                                                               velocity=velocity)))
        self.events.append((self.seconds(end), mido.Message("note_off", note=pitch)))
        return self

    def phrase(self, start: int, pitches, step: int = Q, gap: int = 2, velocity=80) -> Player:
        for i, p in enumerate(pitches):
            self.note(start + i * step, start + (i + 1) * step - gap, p, velocity)
        return self

    def play(self, bars_after: int = 6) -> Player:
        last = max(t for t, _ in self.events)
        run(self.session, self.sim, self.sched,
            Script(list(self.events), stop_at=last + self.seconds(bars_after * BAR)
                   - self.seconds(0)))
        return self

    def machine_pitches(self) -> list[tuple[float, int]]:
        """(tick from the script's origin, pitch) of every machine note-on that sounded."""
        return [(self.clock.time_to_tick(x.t) - self.origin, x.msg.note)
                for x in self.sched.log
                if x.tag == RESPONSE and x.msg.type == "note_on" and x.msg.velocity > 0]

    def machine_ons(self) -> list[tuple[float, int]]:
        """(tick from the script's origin, velocity) of every machine note-on that sounded."""
        return [(self.clock.time_to_tick(x.t) - self.origin, x.msg.velocity)
                for x in self.sched.log
                if x.tag == RESPONSE and x.msg.type == "note_on" and x.msg.velocity > 0]


def wait_for(pred, timeout: float, what: str, every: float = 0.05):
    """``pred()``'s first truthy value within ``timeout`` s, asked every ``every`` s; else an
    AssertionError naming ``what`` (the end-to-end tests' processes and lines)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
