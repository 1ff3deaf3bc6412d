"""The conversation figures can fail, the pairs are what the corpus says, and the harness runs
calls through the live session code end to end (tiny model, tiny corpus with TURNs)."""

from __future__ import annotations

import json
import random

import mido
import numpy as np
import pytest

from improv.core import tokens as tk
from improv.core.tokens import Note
from improv.learn import dataset
from improv.learn.conversation import (
    Phrase,
    all_responsiveness,
    answer_figures,
    estimate_key,
    responsiveness,
    rhythm_similarity,
    top_line,
)
from improv.learn.conversation_pairs import choose_pairs, pairs_of_piece, windows_of_piece

MAJOR = (0, 2, 4, 5, 7, 9, 11)
BAR = 96


# --- synthetic calls and responders --------------------------------------------------------------


def random_call(rng: random.Random, origin: int = 0, bars: int = 2, low: int = 55,
                high: int = 79) -> Phrase:
    """A stepwise melody in a random major key, random rhythm on the sixteenth grid."""
    tonic = rng.randrange(12)
    scale = [p for p in range(low, high + 1) if (p - tonic) % 12 in MAJOR]
    notes, t, end, i = [], origin, origin + bars * BAR, rng.randrange(len(scale))
    while True:
        t += rng.choice([0, 6, 12, 12, 24]) if notes else rng.choice([0, 6, 12])
        d = rng.choice([6, 12, 12, 24, 36])
        if t + d > end:
            break
        i = max(0, min(len(scale) - 1, i + rng.choice([-2, -1, -1, 1, 1, 2, 3, -3])))
        notes.append(Note(t, t + d, scale[i], rng.randint(50, 100)))
        t += d
    return Phrase(notes, origin, BAR)


def echo(call: Phrase, transpose: int = 0, bars: int = 2) -> Phrase:
    """The call again, ``bars`` later (its own bar positions), maybe transposed."""
    off = bars * BAR
    return Phrase([Note(n.start + off, n.end + off, n.pitch + transpose, n.velocity)
                   for n in call.notes], call.origin + off, BAR)


def random_answer(rng: random.Random, origin: int = 2 * BAR, low: int = 60,
                  high: int = 72) -> Phrase:
    """Eighth notes of random pitches in a fixed register: ignores the call entirely."""
    return Phrase([Note(origin + k * 12, origin + k * 12 + 12, rng.randint(low, high), 80)
                   for k in range(16)], origin, BAR)


@pytest.fixture(scope="module")
def calls() -> list[Phrase]:
    rng = random.Random(1)
    return [random_call(rng) for _ in range(200)]


def values(res: dict) -> dict[str, float]:
    return {k: v["value"] for k, v in res.items()}


# --- the figures ---------------------------------------------------------------------------------


def test_an_echo_scores_high(calls):
    got = values(all_responsiveness(calls, [echo(c) for c in calls]))
    assert got["rhythm"] > 0.4
    assert got["pitch_classes"] > 0.4
    assert got["motif"] > 0.8
    assert got["register"] > 4.0  # mismatched median distance minus matched (0)
    octave = values(all_responsiveness(calls, [echo(c, transpose=12) for c in calls]))
    assert octave["rhythm"] == pytest.approx(got["rhythm"])
    assert octave["motif"] == pytest.approx(got["motif"])  # interval shapes survive transposing
    assert octave["register"] < got["register"] - 4.0  # an octave away is not staying near


def test_a_random_responder_scores_about_zero(calls):
    rng = random.Random(7)
    res = all_responsiveness(calls, [random_answer(rng) for _ in calls])
    for name in ("rhythm", "pitch_classes", "motif"):
        assert abs(res[name]["value"]) < 0.05, (name, res[name])
    assert abs(res["register"]["value"]) < 0.5, res["register"]
    assert res["motif"]["calls"] == len(calls)


def test_mismatched_stays_within_a_style_group():
    """Answers in their style's register, deaf to the call: about 0 within groups, but
    'responsive' if other styles' answers count as the mismatch."""
    rng = random.Random(3)
    calls, answers, groups = [], [], []
    for k in range(120):
        low = 40 if k % 2 else 70
        calls.append(random_call(rng, low=low, high=low + 14))
        answers.append(random_answer(rng, low=low, high=low + 12))
        groups.append("low" if k % 2 else "high")
    within = responsiveness(calls, answers, lambda c, a: abs(c.median - a.median), groups,
                            distance=True)
    pooled = responsiveness(calls, answers, lambda c, a: abs(c.median - a.median), None,
                            distance=True)
    assert abs(within["value"]) < 1.0
    assert pooled["value"] > 10.0
    # A call alone in its group has nothing to be compared with: it is left out.
    alone = responsiveness(calls, answers, lambda c, a: abs(c.median - a.median),
                           [*groups[:-1], "only"], distance=True)
    assert alone["calls"] == within["calls"] - 1
    # Never compared with a phrase of its own piece (``sources``).
    seen: list[tuple[int, int]] = []
    ids = {id(x): k for k, x in enumerate(calls + answers)}

    def spy(c, a):
        seen.append((ids[id(c)], ids[id(a)] - len(calls)))
        return 0.0

    piece = [k // 3 for k in range(len(calls))]
    res = responsiveness(calls, answers, spy, sources=piece)
    assert res["calls"] == len(calls)
    assert all(i == j or piece[i] != piece[j] for i, j in seen)
    assert len(seen) == len(calls) * (len(calls) - 2)  # itself + all but its 2 siblings


def test_rhythm_places_onsets_in_the_bar():
    a = Phrase([Note(0, 6, 60, 80), Note(24, 30, 62, 80)], 0, BAR)
    same_place_later_bar = Phrase([Note(2 * BAR, 2 * BAR + 6, 70, 80),
                                   Note(2 * BAR + 24, 2 * BAR + 30, 71, 80)], 2 * BAR, BAR)
    shifted = Phrase([Note(12, 18, 60, 80), Note(36, 42, 62, 80)], 0, BAR)
    assert rhythm_similarity(a, same_place_later_bar) == pytest.approx(1.0)
    assert rhythm_similarity(a, shifted) == pytest.approx(0.0)
    assert rhythm_similarity(a, Phrase([], 0, BAR)) == 0.0


def test_copy_share_sees_transposed_copies(calls):
    rng = random.Random(5)
    copied = answer_figures(calls, [echo(c, transpose=5) for c in calls], [8.0] * len(calls),
                            [8.0] * len(calls))
    assert copied["copy_share"] == pytest.approx(1.0)
    assert copied["density_ratio"] == pytest.approx(1.0)
    fresh = answer_figures(calls, [random_answer(rng) for _ in calls], [8.0] * len(calls),
                           [8.0] * len(calls))
    assert fresh["copy_share"] < 0.1


def test_degeneracy_catches_held_notes_and_repeats():
    call = Phrase([Note(i * 12, i * 12 + 12, 60 + i, 80) for i in range(4)], 0, BAR)
    held = Phrase([Note(0, 9 * 24, 60, 80)], 0, BAR)
    eight = Phrase([Note(0, 8 * 24, 60, 80)], 0, BAR)  # exactly 8 beats is not over 8
    repeats = Phrase([Note(i * 12, i * 12 + 6, 67, 80) for i in range(5)], 0, BAR)
    four = Phrase([Note(i * 12, i * 12 + 6, 67, 80) for i in range(4)] + [Note(48, 54, 69, 80)],
                  0, BAR)
    # A chord under a repeated top note is still a repeat of the top line.
    chords = Phrase([Note(i * 24, i * 24 + 12, p, 80) for i in range(5) for p in (60, 64, 72)],
                    0, BAR)
    empty = Phrase([], 0, BAR)
    answers = [held, eight, repeats, four, chords, empty]
    f = answer_figures([call] * len(answers), answers, [4.0] * 6, [4.0] * 6)
    assert f["held_over_8_beats"] == pytest.approx(1 / 6)
    assert f["repeats_over_4"] == pytest.approx(2 / 6)
    assert f["degenerate"] == pytest.approx(3 / 6)
    assert f["empty"] == pytest.approx(1 / 6)


def test_in_key_and_density():
    c_major = [60, 62, 64, 65, 67, 69, 71, 72]
    call = Phrase([Note(i * 12, i * 12 + 12, p, 80) for i, p in enumerate(c_major)], 0, BAR)
    assert estimate_key(call.notes) == (0, "major")
    inside = Phrase([Note(BAR + i * 6, BAR + i * 6 + 6, c_major[i % 8], 80) for i in range(16)],
                    BAR, BAR)
    outside = Phrase([Note(BAR, BAR + 12, 61, 80), Note(BAR + 12, BAR + 24, 63, 80)], BAR, BAR)
    f = answer_figures([call, call], [inside, outside], [4.0, 4.0], [4.0, 4.0])
    assert f["in_key"] == pytest.approx(16 / 18)
    assert f["density_ratio"] == pytest.approx((2.0 + 0.25) / 2)  # median of 16/8 and 2/8


def test_key_agrees_with_the_evaluations_key_finder():
    from improv.learn.eval_musical import estimate_key as on_tokens
    from tests.helpers import random_piece

    rng = random.Random(0)
    for k in range(20):
        toks = random_piece(rng, k % 5, 12)
        assert estimate_key(tk.decode_notes(toks)) == on_tokens(toks)


# --- pairs from pieces ---------------------------------------------------------------------------


def turn_piece(rng: random.Random, style: int, bars: int, meter=(4, 4), phrase: int = 2):
    """Tokens of random notes that never cross a bar line, TURNs every ``phrase`` bars."""
    bar = tk.Meter(*meter).bar_ticks
    events, turns = [], []
    for b in range(bars):
        t = b * bar + rng.choice([0, 0, 6, 12])
        last = None
        while True:
            d = rng.choice([6, 12, 12, 24])
            if t + d > (b + 1) * bar:
                break
            p = rng.randint(55, 79)
            events += [tk.Event(t, p, rng.randint(40, 110)), tk.Event(t + d, p, 0)]
            last = t + d
            t += d + rng.choice([0, 0, 6, 12])
        if (b + 1) % phrase == 0 and last is not None and b + 1 < bars:
            turns.append(last)
    meters = [(0, *meter)]
    return tk.encode_events(events, style=style, meters=meters, end_tick=bars * bar, turns=turns)


def test_pairs_follow_turns_and_bar_lines():
    toks = turn_piece(random.Random(2), 3, 12)
    pairs, skipped = pairs_of_piece(toks, "p", "folk")
    assert pairs
    notes = tk.decode_notes(toks)
    for p in pairs:
        assert p.origin % BAR == 0 and p.handover % BAR == 0 and p.bar_ticks == BAR
        assert p.origin <= p.call[0].start < p.origin + BAR
        assert p.handover - BAR < p.call_end <= p.handover
        assert p.bars == (p.handover - p.origin) // BAR <= 4
        assert len(p.call) >= 4 and all(n.start < p.turn for n in p.call)
        stop = p.handover + p.bars * BAR
        want = [n for n in notes if p.turn <= n.start < stop]
        assert [(n.start, n.pitch) for n in p.truth] == [(n.start, n.pitch) for n in want]
        assert p.meter == (4, 4)
    assert skipped["piece_end"] >= 1  # the last turns leave no room for a truth


def test_pairs_in_three_four_and_meter_changes():
    toks = turn_piece(random.Random(4), 2, 12, meter=(3, 4))
    pairs, _ = pairs_of_piece(toks, "w", "celtic")
    assert pairs and all(p.bar_ticks == 72 and p.meter == (3, 4) for p in pairs)
    # A bar of another length inside a call or its truth: the pair is skipped.
    events = [tk.Event(t, 60 + (t // 12) % 12, 80 if k == 0 else 0)
              for t in range(0, 8 * BAR, 12) for k in (0, 1)]
    events = [tk.Event(e.tick + (6 if e.velocity == 0 else 0), e.pitch, e.velocity)
              for e in events]
    toks = tk.encode_events(events, style=3, meters=[(0, 4, 4), (3 * BAR, 3, 4)],
                            turns=[2 * BAR - 6, 4 * BAR - 6], end_tick=8 * BAR)
    pairs, skipped = pairs_of_piece(toks, "m", "folk")
    assert skipped["meter"] >= 1


def test_windows_and_choice_cover_every_style():
    rng = random.Random(6)
    pieces = [turn_piece(rng, k % 5, 12) for k in range(10)]
    labels = [tk.CORPUS_STYLES[k % 5] for k in range(10)]
    pairs, info = choose_pairs(pieces, [f"p{k}" for k in range(10)], labels, 3, seed=0)
    assert set(info["per_style"]) == set(tk.CORPUS_STYLES)
    assert [p.style for p in pairs[:5]] == sorted(tk.CORPUS_STYLES)  # interleaved
    again, _ = choose_pairs(pieces, [f"p{k}" for k in range(10)], labels, 3, seed=0)
    assert [(p.piece, p.turn) for p in again] == [(p.piece, p.turn) for p in pairs]
    ws = windows_of_piece(pieces[0], "p0", labels[0])
    assert ws and all(w.notes[0].start < w.origin + BAR for w in ws)
    assert all(max(n.end for n in w.notes) <= w.origin + 8 * BAR for w in ws)


# --- through the session -------------------------------------------------------------------------


def test_machine_notes_close_on_untagged_offs():
    from improv.learn.eval_conversation import machine_notes
    from improv.live.clock import Clock
    from improv.live.simulate import Sent

    clock = Clock(120.0, time_fn=lambda: 0.0)
    spt = clock.seconds_per_tick
    log = [Sent(96 * spt, mido.Message("note_on", note=60, velocity=90), "response"),
           Sent(100 * spt, mido.Message("note_on", note=50, velocity=90), "thru"),
           Sent(108 * spt, mido.Message("note_off", note=60), None),  # a panic's note-off
           Sent(120 * spt, mido.Message("note_on", note=62, velocity=90), "response"),
           Sent(150 * spt, mido.Message("control_change", control=123), None)]
    got = [n for n, _ in machine_notes(log, clock, line=96, origin=1000)]
    assert got == [Note(1000, 1012, 60, 90), Note(1024, 1054, 62, 90)]


def test_ngram_engine_rewind_equals_never_having_fed(tmp_path):
    from improv.learn.baseline import NGramModel
    from improv.learn.ngram_engine import NGramEngine
    from tests.helpers import random_piece

    rng = random.Random(0)
    ng = NGramModel(4).fit([random_piece(rng, k % 5, 30) for k in range(20)])
    a = [tk.BAR, tk.velocity_token(8), tk.note_on_token(60), tk.time_shift_token(12)]
    b = [tk.note_on_token(64), tk.time_shift_token(6), tk.note_off_token(64)]
    c = [tk.note_off_token(60), tk.TURN]
    e1, e2 = NGramEngine(ng), NGramEngine(ng)
    e1.reset("folk")
    e1.feed(a + b)
    e1.rewind(len(b))
    assert e1.logits is None
    got = e1.feed(c)
    e2.reset("folk")
    want = e2.feed(a + c)
    np.testing.assert_allclose(got, want)
    assert e1.context_tokens == e2.context_tokens
    ctx = [tk.style_token(3), *a, *c]
    np.testing.assert_allclose(np.exp(got), ng.next_distribution(ctx), rtol=1e-5)
    twin = e2.twin()
    twin.reset("folk")
    np.testing.assert_allclose(twin.feed(a + c), want)
    e2.step(tk.BAR)
    assert e2.stats.steps == 1 and e2.stats.provider == "ngram"
    e2.rewind(10_000)
    assert e2.context_tokens == [tk.style_token(3)]  # the STYLE token always stays
    small = NGramEngine(ng, context=16)
    small.reset("folk")
    small.feed([tk.time_shift_token(6)] * 40)
    assert small.context_tokens[0] == tk.style_token(3) and len(small.context_tokens) <= 16


@pytest.fixture(scope="module")
def turn_corpus(tmp_path_factory):
    rng = random.Random(11)
    out = tmp_path_factory.mktemp("turn-corpus")
    train = [(f"p{k}", k % 5, turn_piece(rng, k % 5, 12)) for k in range(10)]
    val = [(f"v{k}", k % 5, turn_piece(rng, k % 5, 12)) for k in range(10)]
    dataset.write_split(out, "train", train)
    dataset.write_split(out, "val", val)
    return out


def test_answers_come_back_in_the_calls_frame(tiny_model_dir, turn_corpus):
    from improv.core.presets import PresetLibrary
    from improv.learn.eval_conversation import answer_pair, choose_presets
    from improv.live.engine import Engine

    split = dataset.load_split(turn_corpus, "val")
    pairs, _ = pairs_of_piece(split.piece(0).astype(np.int64), "v0", "chorale")
    lib = PresetLibrary()
    preset = choose_presets(lib, "1", {"response_start": "bar"})[0]
    engine = Engine(tiny_model_dir, provider="cpu", background=False)
    for i, p in enumerate(pairs[:2]):
        a = answer_pair(engine, lib, preset, p, 120.0, i)
        assert a.responses >= 1 and a.planned is not None
        assert (a.planned - p.origin) % p.bar_ticks == 0  # on a bar line of the call's grid
        assert a.notes and a.first >= a.planned and a.first >= p.call_end
        assert all(n.end > n.start for n in a.notes)


def test_the_harness_runs_end_to_end(tiny_model_dir, turn_corpus, tmp_path, capsys):
    from improv.learn.evaluate import main

    out = tmp_path / "conv.json"
    rc = main(["--model", str(tiny_model_dir), "--corpus", str(turn_corpus), "--conversation",
               "--calls", "2", "--windows", "2", "--presets", "1,2", "--set", "temperature=0.8",
               "--json", str(out), "--bar"])
    text = capsys.readouterr().out
    assert rc in (0, 1)  # a random model need not meet the bar; the report must be there
    res = json.loads(out.read_text())
    rows = res["responders"]
    names = res["settings"]["presets"]
    assert len(names) == 2 and set(names) < set(rows)
    assert "truth" in rows and any(n.startswith("n-gram") for n in rows)
    want = {"rhythm", "pitch_classes", "motif", "register", "in_key", "density_ratio",
            "copy_share", "degenerate", "held_over_8_beats", "repeats_over_4", "on_time",
            "offset_beats", "empty", "notes_per_answer"}
    for name, row in rows.items():
        assert want <= set(row), name
    assert rows["truth"]["rhythm"] is not None
    assert res["pairs"]["count"] == len(res["answers"]) >= 5
    assert res["false_handovers"]["windows"] == 2
    assert "elapsed" in text and "bar " + names[0] in text and "false hand-overs" in text
    assert res["bar"]["met"] == (rc == 0)
    assert res["dynamics"]["calls"] >= 1 and "dynamics (" in text


def test_dynamics_figure_tells_a_followed_call_from_an_ignored_one(tiny_model_dir, turn_corpus):
    from improv.core.presets import PresetLibrary, apply_overrides
    from improv.learn.eval_dynamics import dynamics_figure
    from improv.live.engine import Engine

    split = dataset.load_split(turn_corpus, "val")
    pairs = []
    for i in range(len(split)):
        pairs += pairs_of_piece(split.piece(i).astype(np.int64), f"v{i}", "folk")[0]
    lib = PresetLibrary()
    engine = Engine(tiny_model_dir, provider="cpu", background=False)

    def fig(amount):
        p = apply_overrides(lib.default(), dynamics=amount, humanize_ms=0.0, velocity_curve=[])
        return dynamics_figure(engine, lib, p, pairs, 120.0, n=4)

    followed, ignored = fig(1.0), fig(0.0)
    assert followed["calls"] >= 2
    assert followed["answer_after_loud"] - followed["answer_after_soft"] > 30
    assert followed["louder_share"] == 1.0
    assert abs(ignored["answer_after_loud"] - ignored["answer_after_soft"]) < \
        followed["answer_after_loud"] - followed["answer_after_soft"] - 20


def test_bad_set_and_missing_corpus_are_one_line_errors(tiny_model_dir, turn_corpus, tmp_path,
                                                        capsys):
    from improv.learn.evaluate import main

    rc = main(["--model", str(tiny_model_dir), "--corpus", str(turn_corpus), "--conversation",
               "--set", "tempreature=0.8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "temperature" in err
    rc = main(["--model", str(tiny_model_dir), "--corpus", str(tmp_path / "none"),
               "--conversation"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "improv data" in err


def test_top_line_is_the_skyline():
    melody = [Note(0, 48, 72, 80), Note(48, 96, 74, 80)]
    under = [Note(0, 12, 48, 80), Note(12, 24, 50, 80), Note(24, 36, 52, 80),
             Note(36, 48, 53, 80), Note(48, 60, 55, 80)]
    chord = [Note(96, 120, 60, 80), Note(96, 120, 64, 80), Note(96, 120, 67, 80)]
    assert top_line(melody + under + chord) == [72, 74, 67]
