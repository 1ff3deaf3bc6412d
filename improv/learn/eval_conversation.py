"""``improv eval --conversation``: held-out calls answered through the live session code.

This module owns the conversation harness: how a call from
:mod:`improv.learn.conversation_pairs` is played into a real :class:`~improv.live.session.Session`
on simulated time (the session's own hand-over, the preset's sampler constraints, the
answer's start and length, exactly as live), how the machine's notes are read back,
the false hand-over count, the table and the command line. The figures live in
:mod:`improv.learn.conversation`, the n-gram's engine in :mod:`improv.learn.ngram_engine`.

The player. A call is a script of note-ons and note-offs whose bar lines fall on the
session clock's bar lines (the call's first bar line on the first bar line of the
stream), played by :func:`improv.live.simulate.run`; the machine's notes come back from the
simulated scheduler's log, their times turned into ticks of the call's own frame. An
answer is what the machine plays from the call's last note-off on; what it sounded
before that (the player still playing) is counted apart. Humanize and swing are always
0, so notes land on the grid they were generated on; one engine serves every session
(``Session.start`` resets it), each pair with its own sampler seed.

Responders: every chosen preset (the model), the n-gram through the default preset (the
library's first, as ``improv jam`` picks it), and the truth. Each figure of
:mod:`improv.learn.conversation` is matched minus mismatched within a group of pairs of one style
and one bar length: the truth of a chorale call is compared with other chorales' truths, so
sharing a style is not taken for answering, and an answer played on a 3/4 clock is not
credited for sounding like a 3/4 call; never with a pair of its own piece, which shares
key, register and motifs with the call whatever the answer does. A pair with no such
other pair is left out of these four.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from improv.core import tokens as tk
from improv.core.presets import Preset, PresetError, PresetLibrary, apply_overrides, parse_overrides
from improv.learn.baseline import BaselineError
from improv.learn.conversation import FIGURES, Phrase, all_responsiveness, answer_figures
from improv.learn.conversation_pairs import Pair, Window, choose_pairs, choose_windows
from improv.learn.dataset import DataError, default_corpus_dir, load_split, style_names
from improv.learn.eval_dynamics import dynamics_figure, dynamics_line
from improv.live.answer import RESPONSE
from improv.live.clock import Clock
from improv.live.engine import Engine, ModelError
from improv.live.simulate import Script, run, sim_session

DEFAULT_BPM = 120.0
ON_TIME_TICKS = 3  # a 32nd: how late a first note may be and still be on the line
TRUTH, NGRAM = "truth", "n-gram"


# --- answering through the session ----------------------------------------------------------


@dataclass
class Answered:
    """One answer in the call's frame: its notes (from the call's last note-off on)."""

    notes: list[tk.Note]
    first: int | None  # tick of its first note
    planned: int | None = None  # the session's planned start (first response after the call)
    early: int = 0  # machine notes that sounded before the call's last note-off
    responses: int = 0
    length: int | None = None  # the answer's planned length in ticks, where the session says


def call_script(notes: Sequence[tk.Note], origin: int, clock: Clock, line: int,
                t_now: float, stop_at: float) -> Script:
    """The notes as a player's messages: tick ``origin`` sounds on the clock's bar line ``line``."""
    t_line, spt = clock.tick_to_time(line) - t_now, clock.seconds_per_tick
    events = []
    for n in notes:
        events.append(((n.start - origin) * spt + t_line, 1,
                       mido.Message("note_on", note=n.pitch, velocity=max(1, n.velocity))))
        events.append(((n.end - origin) * spt + t_line, 0, mido.Message("note_off", note=n.pitch)))
    events.sort(key=lambda e: (e[0], e[1]))  # at one instant, a key is released before pressed
    return Script([(t, m) for t, _, m in events], stop_at=stop_at)


def articulate(notes: Sequence[tk.Note], articulation: float) -> list[tk.Note]:
    """Each note held for ``articulation`` of its written length (1 = as written: a phrase's
    last note then lasts to the bar line, as the corpus engraves it; a player lets go
    earlier)."""
    if articulation >= 1.0:
        return list(notes)
    return [tk.Note(n.start, n.start + max(1, round((n.end - n.start) * articulation)), n.pitch,
                    n.velocity) for n in notes]


def machine_notes(log, clock: Clock, line: int, origin: int) -> list[tuple[tk.Note, float]]:
    """The machine's notes in the call's frame, each with its note-on time in seconds.

    A note ends at its note-off whatever its tag (the scheduler's cancel and panic send
    untagged ones) or at an all-notes-off."""
    open_: dict[tuple[int, int], tuple[int, float, int]] = {}
    out = []

    def tick(t: float) -> int:
        return int(round(clock.time_to_tick(t))) - line + origin

    for x in log:
        m = x.msg
        if m.type == "note_on" and m.velocity > 0 and x.tag == RESPONSE:
            open_[(m.channel, m.note)] = (tick(x.t), x.t, m.velocity)
        elif m.type in ("note_on", "note_off") and (m.channel, m.note) in open_:
            s, t, v = open_.pop((m.channel, m.note))
            out.append((tk.Note(s, max(tick(x.t), s + 1), m.note, v), t))
        elif m.type == "control_change" and m.control == 123:
            for (_, p), (s, t, v) in list(open_.items()):
                out.append((tk.Note(s, max(tick(x.t), s + 1), p, v), t))
            open_.clear()
    end = tick(log[-1].t) if log else 0
    out += [(tk.Note(s, max(end, s + 1), p, v), t) for (_, p), (s, t, v) in open_.items()]
    return sorted(out, key=lambda nt: nt[0])


def play(engine, library: PresetLibrary, preset: Preset, notes: Sequence[tk.Note], origin: int,
         bar_ticks: int, meter: tuple[int, int], bars_after: int, bpm: float, seed: int):
    """Play ``notes`` into a fresh session; the machine's notes (with times) and the session."""
    s, sim, clock, sched = sim_session(engine, library, preset, bpm, meter, seed)
    line = clock.next_bar(clock.now_tick())
    span = max(n.end for n in notes) - origin if notes else 0
    stop_ticks = line - clock.now_tick() + span + bars_after * bar_ticks
    run(s, sim, sched, call_script(notes, origin, clock, line, sim.t,
                                   stop_ticks * clock.seconds_per_tick))
    if s.error is not None:
        raise s.error
    return machine_notes(sched.log, clock, line, origin), s, clock, line


def answer_pair(engine, library: PresetLibrary, preset: Preset, pair: Pair, bpm: float,
                seed: int, articulation: float = 1.0) -> Answered:
    """One call played into the session; its answer as it sounded."""
    answer_bars = max(pair.bars + 1, preset.response_bars, int(getattr(preset, "call_bars", 0)))
    got, s, clock, line = play(engine, library, preset, articulate(pair.call, articulation),
                               pair.origin, pair.bar_ticks, pair.meter, answer_bars + 3, bpm, seed)
    end = pair.call_end
    notes = [n for n, _ in got if n.start >= end]
    after = [r for r in s.responses if r["start_tick"] - line + pair.origin >= end]
    planned = after[0]["start_tick"] - line + pair.origin if after else None
    length = after[0]["end_tick"] - after[0]["start_tick"] if after and "end_tick" in after[0] \
        else None
    return Answered(notes, notes[0].start if notes else None, planned,
                    early=sum(1 for n, _ in got if n.start < end), responses=len(s.responses),
                    length=length)


def truth_answer(pair: Pair) -> Answered:
    notes = sorted(pair.truth)
    return Answered(notes, notes[0].start if notes else None, length=pair.bars * pair.bar_ticks)


def answer_phrase(pair: Pair, a: Answered) -> Phrase:
    return Phrase(a.notes, pair.handover, pair.bar_ticks)


def call_phrase(pair: Pair) -> Phrase:
    return Phrase(pair.call, pair.origin, pair.bar_ticks)


# --- false hand-overs ----------------------------------------------------------------------


def false_handovers(engine, library: PresetLibrary, preset: Preset, windows: Sequence[Window],
                    bpm: float, seed: int = 0, articulation: float = 1.0) -> dict:
    """Answers that sounded a note while the player was still playing (before the window's
    last note-off), per window and per bar line the player played across."""
    hits = false = lines = 0
    for k, w in enumerate(windows):
        notes = articulate(w.notes, articulation)
        got, s, clock, line = play(engine, library, preset, notes, w.origin, w.bar_ticks,
                                   w.meter, 2, bpm, seed + k)
        end = max(n.end for n in notes)
        starts = sorted(r["planned_time"] for r in s.responses)
        early = [t for n, t in got if n.start < end]
        # Each early note belongs to the latest answer planned at or before it sounded.
        answers = {max((i for i, p in enumerate(starts) if p <= t + 1e-9), default=-1)
                   for t in early}
        false += len(answers)
        hits += bool(answers)
        first = w.notes[0].start
        lines += sum(1 for b in range(w.origin, end, w.bar_ticks) if first < b < end)
    n = len(windows)
    return {"windows": n, "false_answers": false,
            "share_of_windows": hits / n if n else None,
            "per_bar_line": false / lines if lines else None, "bar_lines": lines}


# --- figures of a responder ------------------------------------------------------------------


def answer_quarters(pair: Pair, a: Answered) -> float:
    """An answer's length in quarters: as planned (the session's, or the truth's bars), else
    from the hand-over line to the bar line at or after its last note-off (at least a bar)."""
    if a.length:
        return a.length / tk.TICKS_PER_QUARTER
    end = max((n.end for n in a.notes), default=pair.handover)
    bars = max(1, -(-(end - pair.handover) // pair.bar_ticks))
    return bars * pair.bar_ticks / tk.TICKS_PER_QUARTER


def responder_figures(pairs: Sequence[Pair], answers: Sequence[Answered]) -> dict:
    """Matched-minus-mismatched figures, answer-set figures and hand-over timing."""
    both = list(zip(pairs, answers, strict=True))
    calls = [call_phrase(p) for p in pairs]
    phrases = [answer_phrase(p, a) for p, a in both]
    # Like with like: the clock imposes the call's meter on any answer, so a pair is compared
    # with other pairs of its style and bar length only, and never of its own piece.
    resp = all_responsiveness(calls, phrases, [(p.style, p.bar_ticks) for p in pairs],
                              [p.piece for p in pairs])
    out: dict = {f: resp[f]["value"] for f in FIGURES}
    out["responsiveness"] = resp
    call_q = [p.bars * p.bar_ticks / tk.TICKS_PER_QUARTER for p in pairs]
    out.update(answer_figures(calls, phrases, call_q, [answer_quarters(p, a) for p, a in both]))
    n, beat = len(both), tk.TICKS_PER_QUARTER
    offsets = [(a.first - p.handover) / beat for p, a in both if a.first is not None]
    # On time: the first note on the bar line right after the call's last note-off, or up
    # to a 32nd after it: a phrase held to the line is only known to be over at the line,
    # and the session answers a moment after the release (handover.GRACE_S).
    out["on_time"] = sum(a.first is not None and 0 <= a.first - p.handover <= ON_TIME_TICKS
                         for p, a in both) / n if n else None
    out["exactly_on_line"] = sum(a.first == p.handover for p, a in both) / n if n else None
    out["offset_beats"] = float(np.median(offsets)) if offsets else None
    if any(a.planned is not None or a.responses for a in answers):  # answered by a session
        out["planned_on_time"] = sum(a.planned == p.handover for p, a in both) / n
        out["sounded_during_call"] = sum(a.early > 0 for a in answers) / n
    return out


def figures_by_style(pairs: Sequence[Pair], answers: Sequence[Answered]) -> dict:
    out = {}
    for s in sorted({p.style for p in pairs}):
        idx = [i for i, p in enumerate(pairs) if p.style == s]
        f = responder_figures([pairs[i] for i in idx], [answers[i] for i in idx])
        f.pop("responsiveness")
        out[s] = f
    return out


# --- the evaluation --------------------------------------------------------------------------


class ConversationError(ValueError):
    """The conversation evaluation cannot run as asked; the message says what to do."""


def choose_presets(library: PresetLibrary, which: str, overrides: dict) -> list[Preset]:
    """``all`` or comma-separated names or numbers, each with ``overrides`` and no humanize or
    swing (timing must stay on the grid the answer was generated on)."""
    names = library.names() if which.strip() in ("", "all") else \
        [w.strip() for w in which.split(",") if w.strip()]
    return [measured(library.find(n), overrides)
            for n in names]


def measured(preset: Preset, overrides: dict) -> Preset:
    return apply_overrides(preset, **{**overrides, "humanize_ms": 0.0, "swing": 0.0})


def evaluate_conversation(model_dir, corpus_dir=None, *, presets: str = "all",
                          overrides: dict | None = None, calls: int = 40, windows: int = 40,
                          bpm: float | None = None, seed: int = 0, order: int = 5,
                          ngram: bool = True, articulation: float = 1.0, dynamics: bool = True,
                          log: Callable[[str], object] = print) -> dict:
    """Every number of ``improv eval --conversation`` as a JSON-ready dict."""
    t_all = time.perf_counter()
    corpus_dir = Path(corpus_dir) if corpus_dir else default_corpus_dir()
    val = load_split(corpus_dir, "val")
    engine = Engine(model_dir, provider="cpu", background=False)
    library = PresetLibrary()
    chosen = choose_presets(library, presets, overrides or {})
    default = measured(library.default(), overrides or {})  # improv jam's default
    names = style_names(engine.styles, corpus_dir)
    pieces = [val.piece(i).astype(np.int64) for i in range(len(val))]
    labels = [names.get(int(k), f"style{int(k)}") for k in val.styles]
    pairs, info = choose_pairs(pieces, val.names, labels, calls, seed)
    if not pairs:
        raise ConversationError(f"no usable call/answer pairs in the val split of {corpus_dir} "
                                "(no TURN markers?); rebuild it with 'improv data'")
    log(f"{len(pairs)} calls ({', '.join(f'{s} {n}' for s, n in info['per_style'].items())})")

    answers: dict[str, list[Answered]] = {}
    elapsed: dict[str, float] = {}
    responders: list[tuple[str, object, Preset]] = [(p.name, engine, p) for p in chosen]
    if ngram:  # improv.learn.evaluate holds the cached n-gram (and imports this module)
        from improv.learn.evaluate import fit_or_load_ngram
        from improv.learn.ngram_engine import NGramEngine

        model, _ = fit_or_load_ngram(corpus_dir, load_split(corpus_dir, "train"), order)
        responders.append((f"{NGRAM} ({default.name})", NGramEngine(model, engine.styles),
                           default))
    for name, eng, preset in responders:
        t0 = time.perf_counter()
        p_bpm = bpm or preset.bpm or DEFAULT_BPM
        answers[name] = [answer_pair(eng, library, preset, p, p_bpm, seed + i, articulation)
                         for i, p in enumerate(pairs)]
        elapsed[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {len(pairs)} answers in {elapsed[name]:.1f} s")
    answers[TRUTH] = [truth_answer(p) for p in pairs]

    t0 = time.perf_counter()
    wins = choose_windows(pieces, val.names, labels, windows, seed)
    false = false_handovers(engine, library, default, wins, bpm or default.bpm or DEFAULT_BPM,
                            seed, articulation)
    false["preset"] = default.name
    elapsed["false_handovers"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    dyn = dynamics_figure(engine, library, default, pairs, bpm or default.bpm or DEFAULT_BPM,
                          seed) if dynamics else {}
    dyn["preset"] = default.name
    elapsed["dynamics"] = round(time.perf_counter() - t0, 2)
    rows = {name: responder_figures(pairs, a) for name, a in answers.items()}
    return {
        "model": str(model_dir),
        "corpus": str(corpus_dir),
        "settings": {"calls_per_style": calls, "windows": windows, "bpm": bpm, "seed": seed,
                     "articulation": articulation,
                     "presets": [p.name for p in chosen], "overrides": overrides or {},
                     "default_preset": default.name, "ngram_order": order if ngram else None},
        "pairs": {"count": len(pairs), **info},
        "responders": rows,
        "styles": {name: figures_by_style(pairs, a) for name, a in answers.items()},
        "false_handovers": false,
        "dynamics": dyn,
        "elapsed_s": {**elapsed, "total": round(time.perf_counter() - t_all, 2)},
        "answers": [{"piece": p.piece, "style": p.style, "origin": p.origin,
                     "call_end": p.call_end, "handover": p.handover, "bars": p.bars,
                     "bar_ticks": p.bar_ticks, "call_notes": len(p.call),
                     # per responder: [first note, planned start, notes during the call, notes]
                     **{name: [a[i].first, a[i].planned, a[i].early, len(a[i].notes)]
                        for name, a in answers.items()}}
                    for i, p in enumerate(pairs)],
    }




# --- the bar and the table --------------------------------------------------------------------


def bar_failures(row: dict, truth: dict) -> list[str]:
    """What keeps a preset under the issue's bar: each responsiveness figure at least half
    the truth's, in key at least 0.9, copy share at most the truth's plus 0.15."""
    out = []
    for f in FIGURES:
        want = truth[f] / 2 if truth[f] is not None else None
        if want is not None and (row[f] is None or row[f] < want):
            out.append(f"{f} {_num(row[f], '.3f')} < {want:.3f}")
    if row["in_key"] is None or row["in_key"] < 0.9:
        out.append(f"in-key {_num(row['in_key'], '.3f')} < 0.900")
    if truth["copy_share"] is not None and (row["copy_share"] or 0) > truth["copy_share"] + 0.15:
        out.append(f"copy {_num(row['copy_share'], '.3f')} > {truth['copy_share'] + 0.15:.3f}")
    return out


def _num(v, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


COLUMNS = (("rhythm", "rhythm"), ("pitch_classes", "pitch-cl"), ("motif", "motif"),
           ("register", "register"), ("in_key", "in-key"), ("density_ratio", "density"),
           ("copy_share", "copy"), ("degenerate", "degen"), ("on_time", "on-time"),
           ("offset_beats", "offset"), ("sounded_during_call", "in-call"), ("empty", "empty"),
           ("notes_per_answer", "notes"))


def format_table(res: dict) -> str:
    rows = res["responders"]
    width = max(12, *(len(n) for n in rows))
    lines = [f"{'responder':<{width}} " + " ".join(f"{h:>8}" for _, h in COLUMNS),
             "(rhythm, pitch classes, motif: matched - mismatched similarity; register: "
             "mismatched - matched semitones;",
             " on-time: first note on the bar line after the call; offset: median beats "
             "from that line;",
             " in-call: share of calls the machine sounded notes in before the player ended)"]
    for name, r in rows.items():
        fmt = {"register": ".1f", "offset_beats": "+.2f", "notes_per_answer": ".1f"}
        lines.append(f"{name:<{width}} " + " ".join(
            f"{_num(r.get(k), fmt.get(k, '.2f')):>8}" for k, _ in COLUMNS))
    f = res["false_handovers"]
    lines.append(f"false hand-overs ({f['preset']}, {f['windows']} windows of 8 bars played "
                 f"straight through): {_num(f['share_of_windows'])} of windows, "
                 f"{_num(f['per_bar_line'], '.3f')} per bar line ({f['false_answers']} answers "
                 f"over {f['bar_lines']} bar lines)")
    if res.get("dynamics", {}).get("calls") is not None:
        lines.append(dynamics_line(res["dynamics"], res["dynamics"]["preset"]))
    return "\n".join(lines)


def bar_report(res: dict) -> tuple[list[str], bool]:
    """pass/FAIL per preset; whether the default preset and 4 others pass."""
    truth, lines, passed = res["responders"][TRUTH], [], []
    for name in res["settings"]["presets"]:
        fails = bar_failures(res["responders"][name], truth)
        lines.append(f"bar {name}: " + ("pass" if not fails else "FAIL (" + "; ".join(fails) + ")"))
        if not fails:
            passed.append(name)
    default = res["settings"]["default_preset"]
    met = default in passed and len([p for p in passed if p != default]) >= 4
    lines.append(f"bar: {'met' if met else 'not met'} (default {default} "
                 f"{'passes' if default in passed else 'does not pass'}, "
                 f"{len([p for p in passed if p != default])} other preset(s) pass; needs 4)")
    return lines, met


# --- the command line ------------------------------------------------------------------------


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The ``--conversation`` options of ``improv eval``."""
    g = ap.add_argument_group("conversation (--conversation)")
    g.add_argument("--conversation", action="store_true",
                   help="answer held-out calls through the live session code and measure how "
                        "the answers answer them (skips perplexity)")
    g.add_argument("--calls", type=int, default=40, help="calls per style (default 40)")
    g.add_argument("--windows", type=int, default=40,
                   help="8-bar stretches for the false hand-over count (default 40)")
    g.add_argument("--presets", default="all", help="'all' or names/numbers, comma-separated")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field for every preset (repeatable); humanize_ms "
                        "and swing are always 0 here")
    g.add_argument("--bpm", type=float, default=None, help="tempo (default: preset or 120)")
    g.add_argument("--articulation", type=float, default=1.0,
                   help="the player holds each note for this share of its written length "
                        "(default 1: as written, a phrase's last note to the bar line; less "
                        "puts the player's releases off the grid, as a real player's are)")
    g.add_argument("--no-ngram", action="store_true", help="leave the n-gram row out")
    g.add_argument("--no-dynamics", action="store_true",
                   help="leave out the soft/loud calls that measure the answers' dynamics")
    g.add_argument("--bar", action="store_true",
                   help="check the issue's bar per preset; exit 1 when it is not met")


def run_cli(args: argparse.Namespace, prog: str) -> int:
    """``improv eval --conversation``: the table, the JSON, the bar."""
    t0 = time.perf_counter()
    try:
        if args.calls < 1 or args.windows < 0 or not 0 < args.articulation <= 1:
            raise ConversationError("use --calls >= 1, --windows >= 0, 0 < --articulation <= 1")
        res = evaluate_conversation(
            args.model, args.corpus, presets=args.presets, overrides=parse_overrides(args.set),
            calls=args.calls, windows=args.windows, bpm=args.bpm, seed=args.seed,
            order=args.order, ngram=not args.no_ngram, articulation=args.articulation,
            dynamics=not args.no_dynamics)
    except (ConversationError, DataError, ModelError, BaselineError, PresetError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    print(format_table(res))
    met = True
    if args.bar:
        lines, met = bar_report(res)
        res["bar"] = {"lines": lines, "met": met}
        print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"elapsed {time.perf_counter() - t0:.1f} s")
    return 0 if met else 1
