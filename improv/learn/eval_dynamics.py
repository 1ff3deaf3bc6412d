"""Dynamics in ``improv eval --conversation``: a louder call gets a louder answer, accents carry.

The corpus is engraved (every velocity is 80), so held-out calls say nothing about
dynamics as written. This module plays some of the same calls twice, soft and loud, with
their downbeats accented, through the same live session, and reports what the answers
did with that: their mean velocity after a soft and after a loud call, the share of
calls whose loud version got the louder answer, and how much louder the answers' own
downbeats are than their other notes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from improv.core import tokens as tk
from improv.core.presets import Preset, PresetLibrary
from improv.learn.conversation_pairs import Pair

LEVELS = (45, 105)  # the soft and the loud call's velocity
ACCENT = 20  # added on the call's downbeats


def accented(pair: Pair, level: int) -> list[tk.Note]:
    return [tk.Note(n.start, n.end, n.pitch,
                    min(127, level + (ACCENT if (n.start - pair.origin) % pair.bar_ticks == 0
                                      else 0)))
            for n in pair.call]


def dynamics_figure(engine, library: PresetLibrary, preset: Preset, pairs: Sequence[Pair],
                    bpm: float, seed: int = 0, n: int = 20) -> dict:
    """Answers to ``n`` calls played soft and loud (see the module docstring)."""
    from improv.learn.eval_conversation import play  # the harness plays; it imports this module

    means: dict[int, list[float]] = {lv: [] for lv in LEVELS}
    down, other = [], []
    for i, p in enumerate(pairs[:n]):
        for level in LEVELS:
            got, *_ = play(engine, library, preset, accented(p, level), p.origin, p.bar_ticks,
                           p.meter, p.bars + 4, bpm, seed + i)
            answer = [x for x, _ in got if x.start >= p.call_end]
            if not answer:
                continue
            means[level].append(float(np.mean([x.velocity for x in answer])))
            for x in answer:
                on_beat = (x.start - p.handover) % p.bar_ticks == 0
                (down if on_beat else other).append(x.velocity)
    soft, loud = means[LEVELS[0]], means[LEVELS[1]]
    paired = min(len(soft), len(loud))
    return {
        "calls": paired, "soft_call": LEVELS[0], "loud_call": LEVELS[1], "accent": ACCENT,
        "answer_after_soft": float(np.mean(soft)) if soft else None,
        "answer_after_loud": float(np.mean(loud)) if loud else None,
        "louder_share": sum(b > a for a, b in zip(soft, loud, strict=False)) / paired
        if paired else None,
        "downbeat_accent": float(np.mean(down) - np.mean(other)) if down and other else None,
    }


def dynamics_line(d: dict, preset: str) -> str:
    if not d.get("calls"):
        return f"dynamics ({preset}): no answers to measure"
    return (f"dynamics ({preset}, {d['calls']} calls played at velocity {d['soft_call']} and "
            f"{d['loud_call']}, downbeats +{d['accent']}): answers average "
            f"{d['answer_after_soft']:.0f} after the soft call, {d['answer_after_loud']:.0f} "
            f"after the loud one (louder in {100 * d['louder_share']:.0f}% of calls); "
            f"their downbeats {d['downbeat_accent']:+.1f} over their other notes")
