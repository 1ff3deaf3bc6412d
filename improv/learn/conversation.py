"""What answering the call is measured by: figures of a call and its answer, on notes.

This module owns the conversation figures of ``improv eval --conversation``
(../shared/ANCHORS.md, "What answering the call can be measured by"). It works on
notes (:class:`improv.core.tokens.Note` or ``(start, end, pitch, velocity)`` tuples, ticks
at 24 a quarter) whose bar lines are known: every call and answer comes with the
tick of a bar line (``origin``) and the bar length, so onsets have a place in the bar.
It imports numpy, :mod:`improv.core.tokens` and :mod:`improv.core.keys` only, never torch, so
the live side may score itself with it.

Similarities of one call and one answer:

* rhythm: cosine of onset histograms over the sixteenth positions of the bar (16 in
  4/4; an onset is quantised to the nearest sixteenth; a chord is one onset);
* pitch classes: cosine of duration-weighted pitch-class histograms;
* motif echo: share of the call's distinct melodic interval shapes (2 successive
  intervals of the top line: the highest note at each onset, under no higher held note)
  heard again in the answer's top line; transposed echoes count;
* register: distance in semitones between the median pitches.

Each is reported as MATCHED minus MISMATCHED over a set of pairs (:func:`responsiveness`),
within groups of like pairs (same style, same bar length, never the same piece), so a
responder that ignores the call scores about 0 whatever its style. Per answer set
(:func:`answer_figures`): in-key share, density ratio, copy share, degeneracy, notes per
answer and the share of empty answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from improv.core.keys import KK_MAJOR, KK_MINOR, MODES
from improv.core.tokens import TICKS_PER_QUARTER, Note

SIXTEENTH = TICKS_PER_QUARTER // 4
BAR_4_4 = 4 * TICKS_PER_QUARTER
MOTIF_INTERVALS = 2  # a motif shape: 2 successive intervals (3 notes)
COPY_INTERVALS = 3  # a copied shape: 3 successive intervals (4 notes)
HELD_BEATS = 8.0  # degeneracy: a note held longer than this
MAX_REPEATS = 4  # degeneracy: the same pitch more than this many times in a row
FIGURES = ("rhythm", "pitch_classes", "motif", "register")

NoteLike = Note | Sequence[int]


def as_notes(notes: Iterable[NoteLike]) -> list[Note]:
    """Notes from Note objects or ``(start, end, pitch, velocity)`` tuples, sorted."""
    out = [n if isinstance(n, Note) else Note(int(n[0]), int(n[1]), int(n[2]), int(n[3]))
           for n in notes]
    return sorted(out)


@dataclass
class Phrase:
    """A call or an answer: notes with a bar line ``origin`` and the bar length in ticks."""

    notes: list[Note]
    origin: int = 0
    bar_ticks: int = BAR_4_4

    def __post_init__(self) -> None:
        self.notes = as_notes(self.notes)

    # Each phrase meets every other answer of its group: its features are computed once.
    @cached_property
    def onsets(self) -> np.ndarray:
        return onset_histogram(self)

    @cached_property
    def pitch_classes(self) -> np.ndarray:
        return pitch_class_histogram(self.notes)

    @cached_property
    def top(self) -> list[int]:
        return top_line(self.notes)

    @cached_property
    def motifs(self) -> set[tuple[int, ...]]:
        return set(interval_shapes(self.top, MOTIF_INTERVALS))

    @cached_property
    def median(self) -> float | None:
        return median_pitch(self.notes)


# --- features of one phrase ----------------------------------------------------------------


def onset_histogram(p: Phrase) -> np.ndarray:
    """Onsets per sixteenth position of the bar (a chord's notes are one onset)."""
    bins = max(1, p.bar_ticks // SIXTEENTH)
    h = np.zeros(bins)
    for start in {n.start for n in p.notes}:
        # Nearest sixteenth; an onset just before the next bar line belongs to its downbeat.
        h[int(round((start - p.origin) / SIXTEENTH)) % bins] += 1
    return h


def pitch_class_histogram(notes: Iterable[Note]) -> np.ndarray:
    """Duration in ticks per pitch class."""
    h = np.zeros(12)
    for n in notes:
        h[n.pitch % 12] += max(n.end - n.start, 1)
    return h


def top_line(notes: Iterable[Note]) -> list[int]:
    """The melody a listener follows: at each onset its highest new note, unless a higher
    note is still sounding from before (a skyline: a lower voice moving under a held
    melody note is not the melody). In time order."""
    by_onset: dict[int, int] = {}
    for n in notes:
        by_onset[n.start] = max(by_onset.get(n.start, n.pitch), n.pitch)
    held = sorted(notes, key=lambda n: n.start)
    out, k, active = [], 0, []
    for t in sorted(by_onset):
        while k < len(held) and held[k].start < t:
            active.append(held[k])
            k += 1
        active = [n for n in active if n.end > t]
        if all(n.pitch < by_onset[t] for n in active):
            out.append(by_onset[t])
    return out


def interval_shapes(pitches: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """Every run of ``n`` successive intervals: a shape that stays the same when transposed."""
    iv = np.diff(np.asarray(pitches, dtype=np.int64))
    return [tuple(int(x) for x in iv[i : i + n]) for i in range(len(iv) - n + 1)]


def median_pitch(notes: Sequence[Note]) -> float | None:
    return float(np.median([n.pitch for n in notes])) if notes else None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two histograms (the shorter zero-padded); 0 when either is empty."""
    if len(a) != len(b):
        m = max(len(a), len(b))
        a, b = np.pad(a, (0, m - len(a))), np.pad(b, (0, m - len(b)))
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


# --- similarities of a call and an answer ---------------------------------------------------


def rhythm_similarity(call: Phrase, answer: Phrase) -> float:
    return cosine(call.onsets, answer.onsets)


def pitch_class_similarity(call: Phrase, answer: Phrase) -> float:
    return cosine(call.pitch_classes, answer.pitch_classes)


def motif_echo(call: Phrase, answer: Phrase) -> float | None:
    """Share of the call's distinct 2-interval shapes found in the answer's top line.

    None when the call's top line has no shape (fewer than 3 onsets): nothing to echo.
    """
    if not call.motifs:
        return None
    return len(call.motifs & answer.motifs) / len(call.motifs)


def register_distance(call: Phrase, answer: Phrase) -> float | None:
    """Semitones between median pitches; None when either side is silent."""
    a, b = call.median, answer.median
    return abs(a - b) if a is not None and b is not None else None


SIMILARITIES: dict[str, Callable[[Phrase, Phrase], float | None]] = {
    "rhythm": rhythm_similarity,
    "pitch_classes": pitch_class_similarity,
    "motif": motif_echo,
    "register": register_distance,
}


def responsiveness(calls: Sequence[Phrase], answers: Sequence[Phrase],
                   sim: Callable[[Phrase, Phrase], float | None],
                   groups: Sequence[object] | None = None, *, distance: bool = False,
                   sources: Sequence[object] | None = None) -> dict:
    """Matched minus mismatched: how much more an answer resembles its own call than others'.

    For each call i: its own answer's similarity minus the mean similarity of the other
    answers j != i to it. Where ``groups`` are given (style labels, or style and meter),
    j runs over i's group only: the truth of a chorale call is then compared with other
    chorales, so sharing a style (or a meter the clock imposes) is not taken for
    answering; a call alone in its group has nothing to be compared with and is left out
    (falling back to all pairs would bring that bias back). Where ``sources`` are given
    (the piece each call comes from), j never shares i's source: two phrases of one piece
    share key, register and motifs that the answer did not take from this call. A None
    similarity (a call with
    no motif, a silent answer for register) leaves that term out, and a call with no valid
    own or other term is left out. The figure is the mean of the per-call differences
    (``se`` its standard error, ``calls`` how many count). With ``distance`` (register),
    smaller is more alike, so the sign flips: positive = nearer its own call.
    """
    n = len(calls)
    if len(answers) != n:
        raise ValueError(f"{n} calls but {len(answers)} answers")
    labels = list(groups) if groups is not None else [None] * n
    origin = list(sources) if sources is not None else list(range(n))
    diffs, matched, mismatched = [], [], []
    for i in range(n):
        own = sim(calls[i], answers[i])
        if own is None:
            continue
        others = [s for j in range(n) if j != i and labels[j] == labels[i]
                  and origin[j] != origin[i] and (s := sim(calls[i], answers[j])) is not None]
        if not others:
            continue
        m = float(np.mean(others))
        matched.append(own)
        mismatched.append(m)
        diffs.append(m - own if distance else own - m)
    k = len(diffs)
    return {
        "value": float(np.mean(diffs)) if k else None,
        "se": float(np.std(diffs, ddof=1) / np.sqrt(k)) if k > 1 else None,
        "matched": float(np.mean(matched)) if k else None,
        "mismatched": float(np.mean(mismatched)) if k else None,
        "calls": k,
    }


def all_responsiveness(calls: Sequence[Phrase], answers: Sequence[Phrase],
                       groups: Sequence[object] | None = None,
                       sources: Sequence[object] | None = None) -> dict[str, dict]:
    """The four figures, each matched minus mismatched (register as a distance)."""
    return {name: responsiveness(calls, answers, SIMILARITIES[name], groups,
                                 distance=name == "register", sources=sources)
            for name in FIGURES}


# --- figures of an answer set ----------------------------------------------------------------


def estimate_key(notes: Iterable[Note]) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor"): Krumhansl-Schmuckler on the duration-weighted
    pitch-class histogram, as :func:`improv.learn.eval_musical.estimate_key` does on tokens."""
    hist = pitch_class_histogram(notes)
    if not hist.any():
        return 0, "major"
    best, key = -2.0, (0, "major")
    for mode, profile in (("major", np.array(KK_MAJOR)), ("minor", np.array(KK_MINOR))):
        for tonic in range(12):
            r = np.corrcoef(hist, np.roll(profile, tonic))[0, 1]
            if np.isfinite(r) and r > best + 1e-12:
                best, key = r, (tonic, mode)
    return key


def in_key_count(notes: Iterable[Note], key: tuple[int, str]) -> int:
    """How many notes belong to the key's diatonic scale (minor = natural minor)."""
    scale = set(MODES[key[1]])
    return sum(1 for n in notes if (n.pitch - key[0]) % 12 in scale)


def notes_per_quarter(p: Phrase, quarters: float) -> float:
    return len(p.notes) / max(quarters, 1.0)


def copy_counts(call: Phrase, answer: Phrase) -> tuple[int, int]:
    """(answer top-line 3-interval shapes that are among the call's, all of them)."""
    theirs = set(interval_shapes(call.top, COPY_INTERVALS))
    mine = interval_shapes(answer.top, COPY_INTERVALS)
    return sum(1 for s in mine if s in theirs), len(mine)


def held_too_long(notes: Iterable[Note], beat_ticks: int = TICKS_PER_QUARTER) -> bool:
    return any(n.end - n.start > HELD_BEATS * beat_ticks for n in notes)


def repeats_too_often(notes: Iterable[Note]) -> bool:
    """The top line plays one pitch more than MAX_REPEATS times in a row."""
    run, last = 0, None
    for p in top_line(notes):
        run = run + 1 if p == last else 1
        last = p
        if run > MAX_REPEATS:
            return True
    return False


def answer_figures(calls: Sequence[Phrase], answers: Sequence[Phrase],
                   call_quarters: Sequence[float], answer_quarters: Sequence[float]) -> dict:
    """In-key share, density ratio, copy share, degeneracy, notes per answer, empty share.

    In key and copy share are pooled over all answer notes and shapes; the density ratio
    is the median over pairs of (answer notes per quarter) / (call notes per quarter),
    each over its own length in quarters; degeneracy is a share of answers.
    """
    n = len(answers)
    notes = in_key = copied = shapes = held = repeats = either = 0
    ratios = []
    for c, a, cq, aq in zip(calls, answers, call_quarters, answer_quarters, strict=True):
        notes += len(a.notes)
        in_key += in_key_count(a.notes, estimate_key(c.notes))
        found, total = copy_counts(c, a)
        copied, shapes = copied + found, shapes + total
        base = notes_per_quarter(c, cq)
        if base > 0:
            ratios.append(notes_per_quarter(a, aq) / base)
        h, r = held_too_long(a.notes), repeats_too_often(a.notes)
        held, repeats, either = held + h, repeats + r, either + (h or r)
    return {
        "answers": n,
        "in_key": in_key / notes if notes else None,
        "density_ratio": float(np.median(ratios)) if ratios else None,
        "copy_share": copied / shapes if shapes else None,
        "degenerate": either / n if n else None,
        "held_over_8_beats": held / n if n else None,
        "repeats_over_4": repeats / n if n else None,
        "notes_per_answer": notes / n if n else None,
        "empty": sum(1 for a in answers if not a.notes) / n if n else None,
    }
