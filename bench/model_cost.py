"""What the model costs per note: improv's engine and sampler on real note events.

The unit is the note event as improv's vocabulary writes it: every token from
after one NOTE_ON up to and including the next (its time shifts, bar lines,
velocity and the note-offs in between), about 3 tokens on the corpus. A human
note is fed the way the session feeds it, one ``Engine.feed`` per MIDI message
(each message's tokens in one run); a machine note costs one ``Sampler.sample``
plus one ``Engine.step`` per token. The machine path is teacher-forced: the
sampler draws from the logits (that is the cost) but the corpus token is the one
stepped in, so the token counts are those of real music whatever the weights.

Notes come from the token corpus (``improv data``) when it is there, else from a
synthetic melody through the same StreamEncoder, and the source is reported.
Part of the bench package (bench/common.py runs it); it never imports torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from improv.core import paths
from improv.core import tokens as tk
from improv.live.engine import Engine
from improv.live.sampler import Sampler

_NOTE_END = (tk.is_note_on, tk.is_note_off)


def corpus_dir() -> Path:
    env = os.environ.get("IMPROV_CORPUS")
    return Path(env).expanduser() if env else paths.corpus_dir()


def synthetic_tokens(n_notes: int, seed: int = 0) -> list[int]:
    """A melody with some two-note chords: a random walk in D major, 16ths to quarters."""
    rng = np.random.default_rng(seed)
    scale = [2, 4, 6, 7, 9, 11, 13]
    events, tick, degree = [], 0, 7
    while len(events) < 2 * n_notes:
        degree = int(np.clip(degree + rng.integers(-2, 3), 0, 20))
        pitch = 48 + 12 * (degree // 7) + scale[degree % 7]
        length = int(rng.choice([6, 12, 12, 24]))
        velocity = int(rng.integers(50, 110))
        events += [tk.Event(tick, pitch, velocity), tk.Event(tick + length, pitch, 0)]
        if rng.random() < 0.15:
            events += [tk.Event(tick, pitch - 4, velocity), tk.Event(tick + length, pitch - 4, 0)]
        tick += length
    return tk.encode_events(events)  # no STYLE: the engine puts its own at position 0


def real_tokens(n_notes: int, seed: int = 0) -> tuple[list[int], str]:
    """About ``n_notes`` notes of corpus pieces (their STYLE tokens dropped), and the source."""
    d = corpus_dir()
    try:
        toks = np.load(d / "train_tokens.npy", mmap_mode="r")
        starts = np.load(d / "train_index.npz")["starts"]
    except (OSError, KeyError, ValueError):
        return synthetic_tokens(n_notes, seed), "synthetic melody (no token corpus found)"
    rng = np.random.default_rng(seed)
    out: list[int] = []
    ons = 0
    for i in rng.permutation(len(starts) - 1):
        piece = np.asarray(toks[starts[i] + 1 : starts[i + 1]], dtype=np.int64)
        out += piece.tolist()
        ons += int(((piece >= tk.NOTE_ON_BASE) & (piece < tk.NOTE_OFF_BASE)).sum())
        if ons >= n_notes:
            break
    return out, f"token corpus {d}"


def split_messages(tokens: list[int]) -> list[list[int]]:
    """Tokens grouped as the session feeds them: one group per note-on or note-off message."""
    groups, cur = [], []
    for t in tokens:
        cur.append(int(t))
        if tk.is_note_on(t) or tk.is_note_off(t):
            groups.append(cur)
            cur = []
    return groups


def note_events(tokens: list[int]) -> list[list[list[int]]]:
    """Note events: the message groups after one NOTE_ON up to and including the next."""
    events, cur = [], []
    for g in split_messages(tokens):
        cur.append(g)
        if tk.is_note_on(g[-1]):
            events.append(cur)
            cur = []
    return events


def tokens_per_note(events: list[list[list[int]]]) -> float:
    return sum(len(g) for ev in events for g in ev) / max(1, len(events))


def improv_per_note(model_dir: Path, events: list[list[list[int]]], warmup: int = 30,
                    alternate_every: int = 1) -> dict:
    """Per note event: human feed (ms), machine sample+step (ms), and each step alone (ms).

    Events alternate between the two paths on one stream, as in a set. The engine
    runs as on stage: one ORT thread, context rolls in the background.
    """
    e = Engine(model_dir, provider="cpu", threads=1)
    s = Sampler(seed=0)
    logits = e.logits
    feed, gen, steps = [], [], []
    clock = time.perf_counter
    for i, ev in enumerate(events):
        human = (i // alternate_every) % 2 == 0  # a note's on and off go the same way
        t_ev = 0.0
        for g in ev:
            if human:
                t0 = clock()
                logits = e.feed(g)
                s.observe_all(g, human=True)
                t_ev += clock() - t0
                continue
            for tok in g:
                t0 = clock()
                s.sample(logits)
                s.observe(tok)
                t1 = clock()
                logits = e.step(tok)
                t2 = clock()
                t_ev += t2 - t0
                if i >= warmup:
                    steps.append(t2 - t1)
        if i >= warmup:
            (feed if human else gen).append(t_ev)
    e.close()
    ms = 1e3
    return {"feed_ms": np.array(feed) * ms, "generate_ms": np.array(gen) * ms,
            "step_ms": np.array(steps) * ms, "rolls": e.rolls, "roll_waits": e.roll_waits,
            "context": e.context}


def generation_speed(model_dir: Path, tokens: list[int], n_tokens: int, bpm: float = 120.0,
                     seed: int = 0) -> dict:
    """Seconds of music per second of compute: free sampling, and paced by real music."""
    spt = 60.0 / bpm / tk.TICKS_PER_QUARTER
    out = {}
    e = Engine(model_dir, provider="cpu", threads=1)
    s = Sampler(seed=seed)
    primer = tokens[:64]
    logits = e.feed(primer)
    s.observe_all(primer, human=True)
    tick0 = s.tick
    notes = 0
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        tok = s.sample(logits)
        s.observe(tok)
        logits = e.step(tok)
        notes += tk.is_note_on(tok)
    dt = time.perf_counter() - t0
    music = (s.tick - tick0) * spt
    out["free"] = {"tokens": n_tokens, "notes": notes, "music_s": music, "compute_s": dt,
                   "realtime_factor": music / dt if dt else 0.0}
    e.reset()
    s = Sampler(seed=seed)
    real = tokens[64 : 64 + n_tokens]
    logits = e.logits
    t0 = time.perf_counter()
    for tok in real:
        s.sample(logits)
        s.observe(tok)
        logits = e.step(tok)
    dt = time.perf_counter() - t0
    music = s.tick * spt
    out["corpus_paced"] = {
        "tokens": len(real), "notes": sum(map(tk.is_note_on, real)), "music_s": music,
        "compute_s": dt, "realtime_factor": music / dt if dt else 0.0}
    e.close()
    return out


def notochord_events(events: list[list[list[int]]], bpm: float = 120.0) -> list[list[float]]:
    """The same music as Notochord events: [instrument 1 (piano), pitch, delta s, velocity]."""
    flat = [t for ev in events for g in ev for t in g]
    spt = 60.0 / bpm / tk.TICKS_PER_QUARTER
    out, last = [], 0
    for ev in tk.decode_tokens(flat):
        out.append([1, ev.pitch, (ev.tick - last) * spt, ev.velocity])
        last = ev.tick
    return out
