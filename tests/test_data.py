"""The corpus builder: music21 -> notes -> tokens (learn.pieces), turns, sources, the build."""

from __future__ import annotations

import numpy as np
import pytest

from improv.core import tokens as tk
from improv.core.midifile import Score, read_midi, write_midi
from improv.core.tokens import Note
from improv.learn import data, dataset, pieces

music21 = pytest.importorskip("music21")  # a [train] extra; CI installs it
from music21 import corpus  # noqa: E402


def music21_notes(m21) -> set[tuple[int, int, int]]:
    """(pitch, onset, offset) straight from music21, as the brief defines the conversion."""
    s = m21.stripTies(inPlace=False)
    spans: dict[int, list[tuple[int, int]]] = {}
    for el in s.flatten().notes:
        ql = float(el.duration.quarterLength)
        if ql <= 0:
            continue
        start = round(float(el.offset) * 24)
        end = max(round((float(el.offset) + ql) * 24), start + 1)
        for p in el.pitches:
            spans.setdefault(p.midi, []).append((start, end))
    # One key sounds once: it sounds while any unison voice does, struck at each onset.
    out = set()
    for p, sp in spans.items():
        onsets = sorted({a for a, _ in sp})
        for a, nxt in zip(onsets, onsets[1:] + [None], strict=True):
            end = max(b for s_, b in sp if s_ <= a and b > a)
            out.add((p, a, min(end, nxt) if nxt is not None and nxt < end else end))
    return out


def token_bar_ticks(toks: list[int]) -> list[int]:
    tick, out = 0, []
    for t in toks:
        if tk.is_time_shift(t):
            tick += tk.shift_ticks(t)
        elif t == tk.BAR:
            out.append(tick)
    return out


@pytest.fixture(scope="module")
def chorales():
    return {name: corpus.parse(name) for name in ("bach/bwv66.6", "bach/bwv1.6")}


@pytest.fixture(scope="module")
def abc_tune():
    path = [p for p in corpus.getPaths() if "42dHighlandRegimentStrathspey" in str(p)][0]
    return music21.converter.parse(path)


@pytest.mark.parametrize("name", ["bach/bwv66.6", "bach/bwv1.6"])
def test_chorale_tokens_decode_to_music21_notes(chorales, name):
    m21 = chorales[name]
    score, _ = pieces.score_from_music21(m21)
    toks = pieces.encode_piece(score, tk.CORPUS_STYLES.index("chorale"), name)
    assert toks[0] == tk.style_token(0)
    got = {(n.pitch, n.start, n.end) for n in tk.decode_notes(toks)}
    want = music21_notes(m21)
    assert len(want) > 100
    assert got == want


def test_abc_tune_notes_and_bar_lines(abc_tune):
    score, _ = pieces.score_from_music21(abc_tune)
    toks = pieces.encode_piece(score, tk.CORPUS_STYLES.index("celtic"), "ryans/x")
    assert {(n.pitch, n.start, n.end) for n in tk.decode_notes(toks)} == music21_notes(abc_tune)
    # BAR tokens sit on the measure lines music21 reports, pickup bar included.
    measures = abc_tune.parts[0].getElementsByClass("Measure") if abc_tune.parts else []
    lines = sorted({round(float(m.offset) * 24) for m in measures})
    bars = token_bar_ticks(toks)
    assert lines and bars[: len(lines)] == lines


def test_midi_round_trip_gives_identical_tokens(chorales, abc_tune, tmp_path):
    for i, m21 in enumerate([*chorales.values(), abc_tune]):
        score, _ = pieces.score_from_music21(m21)
        path = tmp_path / f"p{i}.mid"
        write_midi(path, score)
        back = read_midi(path)
        assert pieces.encode_piece(back, 3, "x") == pieces.encode_piece(score, 3, "x")


def four_four(notes: list[Note], bars: int) -> Score:
    return Score(notes=notes, meters=[(0, 4, 4)], end_tick=bars * 96)


def test_turns_at_phrase_lines_only_where_nothing_sounds():
    # Quarter notes for 8 bars, except a half note across the line at bar 4 (tick 384).
    notes = [Note(t, t + 24, 60 + (t // 24) % 5, 80) for t in range(0, 8 * 96, 24)]
    notes = [n for n in notes if n.start not in (360, 384)] + [Note(360, 408, 72, 80)]
    assert pieces.turn_ticks(sorted(notes), [(0, 4, 4)], 8 * 96, 2) == [192, 576]
    assert pieces.turn_ticks(sorted(notes), [(0, 4, 4)], 8 * 96, 4) == []
    # A phrase that ends early: the turn goes at its last note-off, not at the line.
    short = [Note(0, 48, 60, 80), Note(192, 216, 62, 80)]
    assert pieces.turn_ticks(short, [(0, 4, 4)], 4 * 96, 2) == [48]
    # A pickup bar is not counted: lines 0, 24, 120, 216, 312, 408: every two bars from 24.
    pick = [Note(t, t + 24, 60, 80) for t in range(0, 5 * 96, 24)]
    assert pieces.turn_ticks(pick, [(0, 1, 4), (24, 4, 4)], 5 * 96, 2) == [216, 408]


def test_turn_token_between_note_offs_and_next_note_ons():
    notes = [Note(t, t + 24, 60 + i % 3, 80) for i, t in enumerate(range(0, 4 * 96, 24))]
    name = next(f"p{i}" for i in range(100) if pieces.phrase_bars_for(f"p{i}") == 2)
    toks = pieces.encode_piece(four_four(notes, 4), 3, name)
    i = toks.index(tk.TURN)
    assert tk.token_name(toks[i - 1]).startswith("NOTE_OFF")
    assert tk.token_name(toks[i + 1]).startswith("NOTE_ON")
    assert token_bar_ticks(toks[:i]) == [0, 96, 192]
    assert toks.count(tk.TURN) == 1  # bar 4 is the end: no turn there


def test_phrase_bars_is_deterministic_and_mixed():
    got = [pieces.phrase_bars_for(f"bach/bwv{i}") for i in range(50)]
    assert got == [pieces.phrase_bars_for(f"bach/bwv{i}") for i in range(50)]
    assert set(got) == {2, 4}


def test_split_is_deterministic_and_keeps_val_in_every_style():
    names = [f"s{i % 3}/piece{i}" for i in range(3000)]
    styles = [i % 3 for i in range(3000)]
    v = data.assign_val(names, styles)
    order = np.random.default_rng(0).permutation(3000)
    v2 = data.assign_val([names[i] for i in order], [styles[i] for i in order])
    assert [v[i] for i in order] == v2
    assert 0.03 < sum(v) / len(v) < 0.08
    small = data.assign_val([f"tiny{i}" for i in range(12)] + names, [9] * 12 + styles)
    assert sum(small[:12]) >= 3


def make_midi_folder(folder, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        notes = [Note(24 * k, 24 * k + 20, 60 + (i + k) % 12, 90) for k in range(16)]
        write_midi(folder / f"t{i}.mid", Score(notes=notes, end_tick=16 * 24))


def test_build_uses_cache_on_rerun_and_lists_failures(tmp_path, monkeypatch):
    make_midi_folder(tmp_path / "mine" / "sub", 4)
    (tmp_path / "mine" / "broken.mid").write_bytes(b"not a midi file")
    srcs = data.midi_sources(tmp_path / "mine", "mine", 5)
    out = tmp_path / "corpus"
    s1 = data.build(out, srcs, jobs=1, progress=False, styles={"mine": 5})
    assert s1["total"]["pieces"] == 4 and s1["files"]["converted_now"] == 5
    assert [k for k, _ in s1["skipped"]] == ["mine/broken"]
    assert s1["per_style"]["mine"]["notes"] == 4 * 16

    calls = []

    def spy(src):
        calls.append(src.key)
        raise RuntimeError("still broken")

    monkeypatch.setattr(data, "convert_source", spy)
    s2 = data.build(out, srcs, jobs=1, progress=False, styles={"mine": 5})
    assert calls == ["mine/broken"]  # the four good files came from the cache
    assert s2["total"] == s1["total"]
    a, b = dataset.load_split(out, "train"), dataset.load_split(out, "train")
    assert np.array_equal(a.tokens, b.tokens) and (a.styles == 5).all()


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert data.main(["--out", str(tmp_path), "--midi", str(tmp_path)]) == 2
    assert "--style" in capsys.readouterr().err
    assert data.main(["--out", str(tmp_path), "--styles", "jazz"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert data.main(["--out", str(tmp_path), "--midi", str(tmp_path), "--style", "x"]) == 2
    assert "no .mid files" in capsys.readouterr().err


def test_user_style_slots_are_stable(tmp_path):
    m = data._user_slots(tmp_path, "mine")
    assert m["mine"] == len(tk.CORPUS_STYLES)
    (tmp_path / "summary.json").write_text('{"styles": {"mine": 5, "other": 6}}')
    m = data._user_slots(tmp_path, "third")
    assert (m["mine"], m["other"], m["third"]) == (5, 6, 7)


def test_tied_chords_and_grace_notes():
    from music21 import chord, note, stream, tie

    part = stream.Part()
    c1, c2 = chord.Chord(["C4", "E4"], quarterLength=1), chord.Chord(["C4", "G4"], quarterLength=1)
    c1.notes[0].tie = tie.Tie("start")  # only C4 is tied on
    c2.notes[0].tie = tie.Tie("stop")
    part.append([c1, c2, note.Note("D4", quarterLength=1).getGrace(), note.Note("F4")])
    score, stats = pieces.score_from_music21(part)
    got = {(n.pitch, n.start, n.end) for n in score.notes}
    assert got == {(60, 0, 48), (64, 0, 24), (67, 24, 48), (65, 48, 72)}
    assert stats["grace"] == 1


def test_data_midi_converts_only_that_folder_unless_the_corpus_is_asked_for(tmp_path, monkeypatch,
                                                                           capsys):
    make_midi_folder(tmp_path / "mine", 3)
    asked: list[object] = []

    def corpus(styles=None):
        asked.append(styles)
        return []

    monkeypatch.setattr(data, "corpus_sources", corpus)
    argv = ["--out", str(tmp_path / "c"), "--midi", str(tmp_path / "mine"), "--style", "mine",
            "--jobs", "1", "--no-progress"]
    assert data.main(argv) == 0
    assert asked == [] and "3 source files" in capsys.readouterr().out
    assert data.main([*argv, "--with-corpus"]) == 0
    assert asked == [None]
