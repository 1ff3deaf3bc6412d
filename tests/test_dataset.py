"""The dataset on disk and its sampler (learn.dataset): format round trip, crops, transposition."""

from __future__ import annotations

import numpy as np
import pytest

from improv.core import tokens as tk
from improv.core.tokens import Note
from improv.learn import dataset


def test_transpose_tokens_moves_notes_and_rejects_out_of_range():
    toks = np.array(tk.encode_notes([Note(0, 24, 60, 80), Note(24, 48, 100, 90)], style=3))
    up = dataset.transpose_tokens(toks, 3)
    assert [n.pitch for n in tk.decode_notes(up)] == [63, 103]
    keep = ~np.array([tk.is_note_on(t) or tk.is_note_off(t) for t in toks])
    assert np.array_equal(up[keep], toks[keep])
    assert up.dtype == toks.dtype
    assert dataset.transpose_tokens(toks, 9) is None  # 100 + 9 > 108
    assert dataset.transpose_tokens(toks, -40) is None  # 60 - 40 < 21
    assert dataset.transpose_tokens(toks, -39) is not None


def fake_piece(style: int, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    notes = [Note(24 * i, 24 * i + 12, int(rng.integers(55, 75)), 80) for i in range(n)]
    return tk.encode_notes(notes, style=style)


def test_write_split_load_split_round_trip(tmp_path):
    pieces = [("a/1", 0, fake_piece(0, 5, 1)), ("b/2", 3, fake_piece(3, 9, 2))]
    dataset.write_split(tmp_path, "train", pieces)
    sp = dataset.load_split(tmp_path, "train")
    assert sp.tokens.dtype == np.uint16 and sp.starts.dtype == np.int64
    assert sp.styles.dtype == np.int16
    assert sp.names == ["a/1", "b/2"] and list(sp.styles) == [0, 3]
    assert [sp.piece(i).tolist() for i in range(2)] == [p[2] for p in pieces]
    with pytest.raises(ValueError):
        dataset.write_split(tmp_path, "val", [("x", 1, fake_piece(2, 3, 0))])
    with pytest.raises(dataset.DataError, match="improv data"):
        dataset.load_split(tmp_path / "nowhere", "train")


def test_sample_batch_shapes_style_first_and_padding(tmp_path):
    long_, short = fake_piece(1, 40, 3), fake_piece(4, 2, 4)
    dataset.write_split(tmp_path, "train", [("long", 1, long_), ("short", 4, short)])
    sp = dataset.load_split(tmp_path, "train")
    ctx = 32
    batch = dataset.sample_batch(sp, 200, ctx, np.random.default_rng(0), transpose=False)
    assert batch.shape == (200, ctx + 1) and batch.dtype == np.int64
    body = np.array(long_[1:])
    starts = set()
    for row in batch:
        if row[0] == tk.style_token(4):
            n = len(short) - 1
            assert row[1 : 1 + n].tolist() == short[1:]
            assert (row[1 + n :] == tk.PAD).all()
        else:
            assert row[0] == tk.style_token(1)
            crop = row[1:]
            hits = [s for s in range(len(body) - ctx + 1) if (body[s : s + ctx] == crop).all()]
            assert hits
            starts.update(hits)
    assert 0 in starts and len(body) - ctx in starts  # both ends of the uniform range occur
    shifted = dataset.sample_batch(sp, 50, ctx, np.random.default_rng(1), max_shift=6)
    assert (shifted[:, 0] >= tk.STYLE_BASE).all() and (shifted[:, 0] < tk.TIME_SHIFT_BASE).all()
    assert not np.array_equal(shifted[:, 1:], batch[:50, 1:])
