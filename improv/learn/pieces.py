"""One piece of the corpus as tokens: a music21 score as notes, and where the turns go.

This module owns the conversion the corpus builder (:mod:`improv.learn.data`) applies to
each piece: ``score_from_music21`` turns a music21 Score into an
``improv.core.midifile.Score`` (ties joined, unisons folded onto one key, a bar of its
own for every short or long measure), and ``encode_piece`` writes a Score as the
file encoder's stream after its STYLE token, with TURN markers at phrase
boundaries (``turn_ticks``) so the model learns where one player hands over.

music21 is imported only inside ``score_from_music21``; MIDI files need none of it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from improv.core import tokens as tk
from improv.core.tokens import Note

TICKS = tk.TICKS_PER_QUARTER
DEFAULT_VELOCITY = 80


# --- music21 -> notes --------------------------------------------------------------------


def _ticks(quarters) -> int:
    return int(round(float(quarters) * TICKS))


def _velocity(obj) -> int:
    vol = getattr(obj, "volume", None)
    v = getattr(vol, "velocity", None) if vol is not None else None
    return int(v) if v else DEFAULT_VELOCITY


def score_from_music21(m21) -> tuple:
    """An ``improv.core.midifile.Score`` for one music21 Score (or Part); returns (score, stats).

    Tied notes are joined here rather than with music21's ``stripTies``, which
    copies and re-sorts the whole score and took most of the build time.
    """
    from music21 import harmony, meter, note, tempo

    from improv.core.midifile import Score

    parts = list(getattr(m21, "parts", [])) or [m21]
    flats = [p.flatten() for p in parts]
    notes: list[Note] = []
    grace = unpitched = 0
    for k, flat in enumerate(flats):
        base = float(parts[k].offset) if parts[k] is not m21 else 0.0
        ties: dict[float, list] = {}  # pitch -> the open tied note [start, end, pitch, vel]
        for el in flat.notes:
            if isinstance(el, harmony.Harmony):
                continue  # chord symbols are annotations, not sounding notes
            if isinstance(el, note.Unpitched) or not hasattr(el, "pitches"):
                unpitched += 1
                continue
            ql = float(el.duration.quarterLength)
            if ql <= 0 or el.duration.isGrace:
                grace += 1
                continue
            off = base + float(el.offset)
            start, end = _ticks(off), _ticks(off + ql)
            vel = _velocity(el)
            members = el.notes if hasattr(el, "notes") and el.notes else [el]
            for n in members:
                ps, tie = n.pitch.ps, (n.tie.type if n.tie is not None else None)
                held = ties.get(ps)
                if held is not None and tie in ("continue", "stop") and abs(start - held[1]) <= 1:
                    held[1] = end
                    if tie == "stop":
                        notes.append(_note(ties.pop(ps)))
                    continue
                if held is not None:  # a tie that never stopped: the note ends where it got to
                    notes.append(_note(ties.pop(ps)))
                item = [start, end, int(round(ps)), vel]
                if tie in ("start", "continue"):
                    ties[ps] = item
                else:
                    notes.append(_note(item))
        notes += [_note(item) for item in ties.values()]
    notes = _one_note_per_key(notes)
    time_sigs = flats[0].getElementsByClass(meter.TimeSignature)
    meters = _meters(parts[0], list(time_sigs))
    tempos = []
    for flat in flats:
        for mm in flat.getElementsByClass(tempo.MetronomeMark):
            bpm = mm.getQuarterBPM()
            if bpm:
                tempos.append((_ticks(mm.offset), int(round(60_000_000 / bpm))))
    tempos = sorted(dict(sorted(tempos)).items()) or [(0, 500_000)]
    if tempos[0][0] != 0:
        tempos.insert(0, (0, tempos[0][1]))
    end_tick = max([n.end for n in notes] + [_ticks(m21.highestTime)])
    score = Score(notes=notes, tempos=tempos, meters=meters, end_tick=end_tick)
    return score, {"grace": grace, "unpitched": unpitched}


def _note(item: list) -> Note:
    start, end, pitch, vel = item
    return Note(start, max(end, start + 1), pitch, vel)


def _one_note_per_key(notes: list[Note]) -> list[Note]:
    """Overlapping notes of one pitch become what a keyboard plays: the key sounds
    as long as any of them does, struck again at each later onset.

    Voices in unison would otherwise encode as NOTE_ON, NOTE_OFF, NOTE_ON, and
    overlaps would not survive a trip through a MIDI file unchanged.
    """
    by_pitch: dict[int, list[list[int]]] = {}
    for n in sorted(notes):
        held = by_pitch.setdefault(n.pitch, [])
        if held and held[-1][0] == n.start:
            held[-1][1] = max(held[-1][1], n.end)
        elif held and n.start < held[-1][1]:
            end = max(held[-1][1], n.end)
            held[-1][1] = n.start
            held.append([n.start, end, n.velocity])
        else:
            held.append([n.start, n.end, n.velocity])
    return sorted(Note(a, b, p, v) for p, held in by_pitch.items() for a, b, v in held)


def _meter_for(length: int) -> tuple[int, int] | None:
    """A meter whose bar is ``length`` ticks (a pickup or a short bar), if one fits."""
    for den in (4, 8, 16, 32):
        unit = TICKS * 4 // den
        if length % unit == 0:
            return length // unit, den
    return None


def _meters(part, time_sigs: list) -> list[tuple[int, int, int]]:
    """Meter changes, with a bar of its own length wherever a measure is short or long.

    A pickup or a short bar before a repeat would otherwise shift every later
    BAR token. Such a bar gets the meter that fits it (a quarter pickup in 4/4
    is a 1/4 bar), and the written meter resumes after it, as a MIDI file
    would say it.
    """
    written: dict[int, tuple[int, int]] = {}
    for ts in time_sigs:
        written.setdefault(_ticks(ts.offset), (ts.numerator, ts.denominator))
    out = dict(written)
    starts = sorted({_ticks(m.offset) for m in part.getElementsByClass("Measure")})
    cur = written.get(0, (4, 4))
    for a, b in zip(starts, starts[1:], strict=False):
        cur = written.get(a, cur)
        if b - a != tk.Meter(*cur).bar_ticks and (fit := _meter_for(b - a)):
            out[a] = fit
            out.setdefault(b, cur)
    if 0 not in out:
        out[0] = (4, 4)
    merged: list[tuple[int, int, int]] = []
    for t, (n, d) in sorted(out.items()):
        if merged and (merged[-1][1], merged[-1][2]) == (n, d):
            bar = tk.Meter(n, d).bar_ticks
            if (t - merged[-1][0]) % bar == 0:
                continue  # already on the grid: a repeat says nothing
        merged.append((t, n, d))
    return merged


# --- notes -> tokens, with turns ---------------------------------------------------------


def phrase_bars_for(name: str) -> int:
    return 2 if hashlib.sha1(name.encode()).digest()[0] % 2 == 0 else 4


def bar_lines(meters: list[tuple[int, int, int]], end_tick: int) -> list[int]:
    """Bar line ticks up to ``end_tick``, as the stream encoder draws them."""
    ms = sorted(meters) or [(0, 4, 4)]
    lines = []
    for i, (t, n, d) in enumerate(ms):
        stop = ms[i + 1][0] if i + 1 < len(ms) else end_tick + 1
        bar = tk.Meter(max(1, n), max(1, d)).bar_ticks or tk.Meter().bar_ticks
        line = t
        while line < stop and line <= end_tick:
            if not lines or line > lines[-1]:
                lines.append(line)
            line += bar
    return lines


def turn_ticks(notes: list[Note], meters, end_tick: int, phrase_bars: int) -> list[int]:
    """TURN ticks: every ``phrase_bars`` bars, at the latest note-off at or before the line,
    where no note sounds across the line. A short first bar (pickup) is not counted."""
    if not notes:
        return []
    lines = bar_lines(meters, end_tick)
    first = 1 if len(lines) > 2 and lines[1] - lines[0] < lines[2] - lines[1] else 0
    starts = np.array([n.start for n in notes])
    ends = np.array([n.end for n in notes])
    last_onset = int(starts.max())
    out: list[int] = []
    for j in range(first + phrase_bars, len(lines), phrase_bars):
        line = lines[j]
        if line > last_onset:
            break  # nothing follows: the piece simply ends
        if np.any((starts < line) & (ends > line)):
            continue
        done = ends[ends <= line]
        if done.size == 0:
            continue
        t = int(done.max())
        if out and t <= out[-1]:
            continue
        out.append(t)
    return out


def encode_piece(score, style: int, name: str) -> list[int]:
    turns = turn_ticks(score.notes, score.meters, score.end_tick, phrase_bars_for(name))
    return tk.encode_events(
        tk.notes_to_events(score.notes),
        style=style,
        meters=score.meters,
        end_tick=score.end_tick,
        turns=turns,
    )

