"""The ONNX export against the torch model: the decode contract in improv/learn/export.py."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
import torch
from helpers import random_piece, tiny_flags, write_corpus

from improv.core import tokens as tk
from improv.learn import export, train
from improv.learn.model import load_model

# Context 320 so that a 300-token decode fits without re-encoding.
TINY_FLAGS = tiny_flags(context=320)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model trained for a few steps (so no weight is at its initial value), exported."""
    root = tmp_path_factory.mktemp("export")
    write_corpus(root / "corpus", n_train=10, n_val=3, n_notes=200)
    rc = train.main(
        [
            "--data",
            str(root / "corpus"),
            "--out",
            str(root / "model"),
            "--ckpt",
            str(root / "ckpt"),
            "--steps",
            "4",
            "--lr",
            "1e-2",
            *TINY_FLAGS,
        ]
    )
    assert rc == 0
    return root / "model"


@pytest.fixture(scope="module")
def sequence():
    toks = random_piece(random.Random(5), 3, 200)[:300]
    assert len(toks) == 300
    return np.array(toks, dtype=np.int64)


def full_logits(model_dir, toks: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits, _ = load_model(model_dir)(torch.from_numpy(toks)[None])
    return logits[0].numpy()


def test_graph_follows_the_contract(model_dir):
    m = onnx.load(str(model_dir / "model.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == ["tokens", "position", "past_keys", "past_values"]
    assert [o.name for o in m.graph.output] == ["logits", "new_keys", "new_values"]
    dims = [d.dim_value for d in m.graph.input[2].type.tensor_type.shape.dim]
    assert dims == [2, 1, 2, 320, 16]
    # The cache is only ever read in place: no node outside the per-layer Scan touches it,
    # and inside it the per-layer slice feeds matrix products only (no Concat, no copy).
    users = [n.op_type for n in m.graph.node if {"past_keys", "past_values"} & set(n.input)]
    assert users == ["Scan"]
    body = next(a.g for n in m.graph.node if n.op_type == "Scan" for a in n.attribute)
    for n in body.node:
        if {"past_k", "past_v"} & set(n.input):
            assert n.op_type in ("MatMul", "Transpose"), n.op_type
            if n.op_type == "Transpose":  # K^T, which ORT folds into its matrix product
                consumers = [c.op_type for c in body.node if n.output[0] in c.input]
                assert consumers == ["MatMul"]


def test_300_token_decode_matches_torch(model_dir, sequence):
    steps = export.run_onnx_decode(model_dir, sequence)
    full = full_logits(model_dir, sequence)
    assert steps.shape == full.shape == (300, tk.VOCAB_SIZE)
    assert np.abs(steps - full).max() < 1e-4
    # Not a trivially flat model: the logits really vary with the input.
    assert full.std(axis=-1).min() > 1e-3 and np.abs(np.diff(full, axis=0)).max() > 1e-2


def test_prefill_matches_steps(model_dir, sequence):
    full = full_logits(model_dir, sequence)
    for prefill in (1, 37, 300):
        got = export.run_onnx_decode(model_dir, sequence, prefill=prefill)
        assert np.abs(got - full).max() < 1e-4, prefill


def test_torch_cached_step_matches_onnx_step(model_dir, sequence):
    gpt = load_model(model_dir)
    sess = export.ort_session(model_dir / "model.onnx")
    keys, values = gpt.empty_cache()
    rng = np.random.default_rng(0)
    keys.copy_(torch.from_numpy(rng.standard_normal(keys.shape, dtype=np.float32)))
    values.copy_(torch.from_numpy(rng.standard_normal(values.shape, dtype=np.float32)))
    for pos, t in ((0, 8), (57, 1), (200, 5)):
        chunk = sequence[pos : pos + t][None]
        lg, nk, nv = gpt.forward_cached(torch.from_numpy(chunk), pos, keys, values)
        olg, onk, onv = sess.run(
            None,
            {
                "tokens": chunk,
                "position": np.array([pos]),
                "past_keys": keys.numpy(),
                "past_values": values.numpy(),
            },
        )
        for a, b in ((lg, olg), (nk, onk), (nv, onv)):
            assert np.abs(a.numpy() - b).max() < 1e-4


def test_garbage_beyond_position_is_ignored(model_dir, sequence):
    sess = export.ort_session(model_dir / "model.onnx")
    shape = (2, 1, 2, 320, 16)
    keys, values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    n = 120
    _, nk, nv = sess.run(
        None,
        {
            "tokens": sequence[None, :n],
            "position": np.array([0]),
            "past_keys": keys,
            "past_values": values,
        },
    )
    keys[:, :, :, :n], values[:, :, :, :n] = nk, nv
    feed = {"tokens": sequence[None, n : n + 3], "position": np.array([n])}
    clean = sess.run(None, {**feed, "past_keys": keys, "past_values": values})
    rng = np.random.default_rng(1)
    dirty_k, dirty_v = keys.copy(), values.copy()
    dirty_k[:, :, :, n:] = rng.standard_normal(dirty_k[:, :, :, n:].shape) * 1e4
    dirty_v[:, :, :, n:] = 3e38
    dirty = sess.run(None, {**feed, "past_keys": dirty_k, "past_values": dirty_v})
    for a, b in zip(clean, dirty, strict=True):
        assert np.array_equal(a, b)
    # ...while the slots below position do matter.
    dirty_k[:, :, :, : n // 2] += 1.0
    moved = sess.run(None, {**feed, "past_keys": dirty_k, "past_values": dirty_v})
    assert np.abs(moved[0] - clean[0]).max() > 1e-4


def test_cache_update_graph(model_dir):
    sess = export.ort_session(model_dir / "cache_update.onnx")
    rng = np.random.default_rng(2)
    past = rng.standard_normal((2, 1, 2, 320, 16), dtype=np.float32)
    for pos, t in ((0, 1), (17, 4), (319, 1), (100, 220)):
        new = rng.standard_normal((2, 1, 2, t, 16), dtype=np.float32)
        (present,) = sess.run(
            None, {"past": past, "new": new, "position": np.array([pos], np.int64)}
        )
        want = past.copy()
        want[:, :, :, pos : pos + t] = new
        assert np.array_equal(present, want), (pos, t)


def test_export_cli(model_dir, tmp_path, capsys):
    assert export.main(["--model", str(model_dir), "--out", str(tmp_path / "copy")]) == 0
    for name in ("model.onnx", "cache_update.onnx", "config.json", "vocab.json"):
        assert (tmp_path / "copy" / name).is_file()
    a = export.run_onnx_decode(tmp_path / "copy", [tk.style_token(0), tk.BAR, 100])
    b = export.run_onnx_decode(model_dir, [tk.style_token(0), tk.BAR, 100])
    assert np.array_equal(a, b)
    assert export.main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and len(err.splitlines()) == 1
