"""The transformer, its training loop and model directories (learn.model, learn.train)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_flags, write_corpus
from safetensors.torch import load_file

from improv.core import tokens as tk
from improv.learn import train
from improv.learn.model import GPT, ModelConfig, ModelError, load_model, save_model

TINY = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, context=64)  # what TINY_FLAGS train
TINY_FLAGS = tiny_flags(TINY.context)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=20, n_val=5, n_notes=80)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY).eval()


def test_shapes_and_config_round_trip():
    m = tiny_model()
    idx = torch.randint(0, TINY.vocab_size, (3, 20))
    logits, loss = m(idx)
    assert logits.shape == (3, 20, TINY.vocab_size) and loss is None
    _, loss = m(idx, idx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    keys, values = m.empty_cache()
    assert keys.shape == (2, 1, 2, 64, 16)
    lg, nk, nv = m.forward_cached(idx[:1, :5], 7, keys, values)
    assert lg.shape == (1, 5, TINY.vocab_size) and nk.shape == nv.shape == (2, 1, 2, 5, 16)
    assert ModelConfig.from_dict({**TINY.to_dict(), "format": 1, "extra": 3}) == TINY
    with pytest.raises(ModelError):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ModelError):
        m.forward_cached(idx[:1, :5], 60, keys, values)
    with pytest.raises(ModelError):
        ModelConfig(d_model=30, n_head=4)


def test_loss_ignores_pad_targets():
    m = tiny_model()
    idx = torch.randint(3, TINY.vocab_size, (2, 16))
    targets = torch.randint(3, TINY.vocab_size, (2, 16))
    targets[0, 10:] = tk.PAD
    targets[1, :4] = tk.PAD
    logits, loss = m(idx, targets)
    keep = targets != tk.PAD
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, expected, atol=1e-6)
    # What the model predicts at PAD targets does not matter at all.
    other = targets.clone()
    other[~keep] = tk.PAD
    assert torch.allclose(m(idx, other)[1], loss)


def test_cached_forward_matches_full_forward():
    m = tiny_model()
    idx = torch.randint(0, TINY.vocab_size, (1, 50))
    full, _ = m(idx)
    keys, values = m.empty_cache()
    keys.normal_(0, 100)  # garbage in every slot not yet written must not matter
    values.normal_(0, 100)
    outs, pos = [], 0
    for chunk in [idx[:, :9]] + [idx[:, i : i + 1] for i in range(9, 50)]:
        lg, nk, nv = m.forward_cached(chunk, pos, keys, values)
        keys[:, :, :, pos : pos + chunk.shape[1]] = nk
        values[:, :, :, pos : pos + chunk.shape[1]] = nv
        outs.append(lg)
        pos += chunk.shape[1]
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    m = tiny_model(3)
    styles = {**{s: i for i, s in enumerate(tk.CORPUS_STYLES)}, "mine": 5}
    save_model(m, tmp_path, styles)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["format"] == 1 and cfg["d_model"] == 32 and cfg["context"] == 64
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["tokens"] == tk.vocabulary() and vocab["styles"]["mine"] == 5
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(m.state_dict())
    back = load_model(tmp_path)
    idx = torch.randint(0, TINY.vocab_size, (2, 30))
    assert torch.equal(back(idx)[0], m(idx)[0])
    with pytest.raises(ModelError, match="config.json"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        save_model(m, tmp_path / "bad", {"x": 16})


def test_training_steps_reduce_loss_on_a_repeated_phrase():
    torch.manual_seed(0)
    m = GPT(TINY)
    phrase = [
        tk.BAR,
        tk.note_on_token(60),
        tk.time_shift_token(12),
        tk.note_off_token(60),
        tk.note_on_token(64),
        tk.time_shift_token(12),
        tk.note_off_token(64),
    ]
    seq = torch.tensor([tk.style_token(0)] + phrase * 9)[None, :64]
    opt = train.make_optimizer(m, 3e-3, 0.1, "cpu")
    losses = []
    for _ in range(40):
        _, loss = m(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_lr_schedule():
    assert train.lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert train.lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert train.lr_at(10, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert train.lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    mid = train.lr_at(55, 1.0, 10, 100, 0.1)
    assert 0.1 < mid < 1.0 and mid == pytest.approx(0.55)


def test_weight_decay_on_matrices_only():
    opt = train.make_optimizer(tiny_model(), 1e-3, 0.1, "cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"]) and plain["params"]


def test_improv_train_end_to_end(corpus, tmp_path):
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    rc = train.main(
        [
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--ckpt",
            str(ckpt),
            "--steps",
            "5",
            "--eval-every",
            "2",
            *TINY_FLAGS,
        ]
    )
    assert rc == 0
    for name in (
        "model.safetensors",
        "config.json",
        "vocab.json",
        "model.onnx",
        "cache_update.onnx",
        "MODEL_CARD.md",
    ):
        assert (out / name).is_file(), name
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 5 and state["best_step"] in (2, 4, 5)
    assert np.isfinite(state["best_val"])
    assert load_model(out).cfg.d_model == 32
    extra = torch.load(ckpt / "optim.pt", weights_only=True)
    assert "optimizer" in extra
    # Shorter training sequences than the context are allowed, longer ones are not.
    short = ["--data", str(corpus), "--out", str(tmp_path / "short"), "--steps", "2", *TINY_FLAGS]
    assert train.main([*short, "--ckpt", str(tmp_path / "c2"), "--seq-len", "16"]) == 0
    assert train.main([*short, "--ckpt", str(tmp_path / "c3"), "--seq-len", "65"]) == 2
    # A second run into the same checkpoint folder must be asked for explicitly.
    rc = train.main(
        ["--data", str(corpus), "--out", str(out), "--ckpt", str(ckpt), "--steps", "5", *TINY_FLAGS]
    )
    assert rc == 2


def test_resume_restores_step_weights_and_data_order(corpus, tmp_path):
    common = [
        "--data",
        str(corpus),
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--warmup",
        "2",
        *TINY_FLAGS,
    ]
    straight = tmp_path / "straight"
    assert train.main([*common, "--out", str(straight / "m"), "--ckpt", str(straight / "c")]) == 0
    split = tmp_path / "split"
    args = [*common, "--out", str(split / "m"), "--ckpt", str(split / "c")]
    assert train.main([*args, "--stop-at", "4"]) == 0
    assert json.loads((split / "c" / "state.json").read_text())["step"] == 4
    assert train.main([*args, "--resume"]) == 0
    assert json.loads((split / "c" / "state.json").read_text())["step"] == 6
    a = load_file(str(straight / "c" / "model.safetensors"))
    b = load_file(str(split / "c" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_fine_tune_on_a_midi_folder_takes_a_user_style_slot(corpus, tmp_path):
    from improv.core.midifile import Score, write_midi

    base = tmp_path / "base"
    assert (
        train.main(
            [
                "--data",
                str(corpus),
                "--out",
                str(base),
                "--ckpt",
                str(tmp_path / "c0"),
                "--steps",
                "2",
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    mids = tmp_path / "mids"
    mids.mkdir()
    rng = random.Random(1)
    for i in range(5):
        notes = [tk.Note(24 * j, 24 * j + 12, rng.randint(55, 75), 90) for j in range(40)]
        write_midi(mids / f"tune{i}.mid", Score(notes=notes, end_tick=24 * 40))
    out = tmp_path / "tuned"
    rc = train.main(
        [
            "--from",
            str(base),
            "--data",
            str(mids),
            "--style",
            "mine",
            "--out",
            str(out),
            "--ckpt",
            str(tmp_path / "c1"),
            "--steps",
            "2",
            "--batch",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    styles = json.loads((out / "vocab.json").read_text())["styles"]
    assert styles["mine"] == 5 and styles["chorale"] == 0
    assert (out / "model.onnx").is_file()
    assert train.style_slot(styles, "other")["other"] == 6
    assert train.style_slot(styles, "mine") == styles


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    rc = train.main(
        [
            "--data",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "m"),
            "--ckpt",
            str(tmp_path / "c"),
            *TINY_FLAGS,
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    rc = train.main(
        [
            "--from",
            str(tmp_path / "nomodel"),
            "--out",
            str(tmp_path / "m"),
            "--ckpt",
            str(tmp_path / "c"),
            "--no-progress",
        ]
    )
    assert rc == 2


def test_a_fine_tune_makes_a_few_passes_over_the_players_data_not_a_thousand_steps():
    from improv.learn.train import default_steps

    assert default_steps(False, 10**8, 8192) == 20000
    assert default_steps(True, 1600, 16 * 512) == 40  # ten short files: a few minutes
    assert default_steps(True, 10**6, 16 * 512) == 8 * 123
    assert default_steps(True, 10**8, 16 * 512) == 1000
