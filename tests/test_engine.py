"""Engine: cached decode equals the full model, the window rolls, bad models fail clearly."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from improv.core import tokens as tk
from improv.live.engine import Engine, ModelError
from improv.live.sampler import Constraints, Sampler

C = 64
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight model with a 64-token window, exported to ONNX."""
    import torch

    from improv.learn.export import export_model
    from improv.learn.model import GPT, ModelConfig, default_styles, save_model

    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, context=C)).eval()
    d = tmp_path_factory.mktemp("tiny")
    save_model(gpt, d, default_styles())
    export_model(d)

    def reference(toks: list[int]) -> np.ndarray:
        with torch.no_grad():
            return gpt(torch.tensor([toks]))[0][0].numpy()

    return d, reference


def random_tokens(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(tk.TIME_SHIFT_BASE, tk.VOCAB_SIZE, n).tolist()


def test_feed_and_step_equal_the_full_sequence(tiny):
    d, reference = tiny
    e = Engine(d, provider="cpu", background=False)
    e.reset("folk")
    toks = random_tokens(40, seed=1)
    got = [e.feed(toks[:15])] + [e.step(t) for t in toks[15:]]
    ref = reference([tk.style_token(3)] + toks)
    np.testing.assert_allclose(got[0], ref[15], atol=TOL)
    np.testing.assert_allclose(np.array(got[1:]), ref[16:], atol=TOL)
    assert e.position == 41 and e.context_tokens == [tk.style_token(3)] + toks


def test_sync_roll_equals_a_fresh_engine_on_style_and_last_k(tiny):
    d, _ = tiny
    e = Engine(d, provider="cpu", background=False)
    fresh = Engine(d, provider="cpu", background=False)
    e.reset("celtic")
    toks = random_tokens(3 * C + 17, seed=2)
    seen, checked = [], 0
    for t in toks:
        rolls = e.rolls
        logits = e.step(t)
        seen.append(t)
        assert e.position <= C
        if e.rolls > rolls:  # rolled on this very token
            fresh.reset("celtic")
            want = fresh.feed(seen[-e.keep :])
            np.testing.assert_allclose(logits, want, atol=TOL)
            assert e.context_tokens == [tk.style_token(2)] + seen[-e.keep :]
            checked += 1
    assert checked >= 3 and e.rolls == checked and e.roll_waits == 0


@pytest.mark.parametrize("inline_chunk", [0, 5])
def test_background_roll_keeps_exact_logits_past_three_windows(tiny, inline_chunk):
    d, reference = tiny
    e = Engine(d, provider="cpu", background=True, inline_chunk=inline_chunk)
    e.reset("chorale")
    toks = random_tokens(4 * C, seed=3)
    for i, t in enumerate(toks):
        logits = e.step(t)
        if i % 23 == 0 or i == len(toks) - 1:
            ctx = e.context_tokens
            assert ctx[0] == tk.style_token(0) and len(ctx) <= C
            assert ctx[1:] == toks[i + 2 - len(ctx) : i + 1]  # a contiguous tail of the stream
            np.testing.assert_allclose(logits, reference(ctx)[-1], atol=TOL)
    e.close()
    assert e.rolls >= 3
    if inline_chunk:  # 33 tokens in chunks of 5 end well before the window fills
        assert e.roll_waits == 0
    s = e.stats
    assert s.steps == len(toks) and s.rolls == e.rolls and s.median_ms > 0


def test_tokens_during_a_slow_reencode_are_caught_up(tiny, monkeypatch):
    d, reference = tiny
    gate, finished = threading.Event(), threading.Event()
    reencode = Engine._reencode

    def slow(roll, runner):
        gate.wait(10)
        reencode(roll, runner)
        finished.set()

    monkeypatch.setattr(Engine, "_reencode", staticmethod(slow))
    e = Engine(d, provider="cpu", background=True, inline_chunk=0)  # a background thread

    def release_when_waiting():
        deadline = time.monotonic() + 10
        while e.roll_waits == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.set()

    waiter = None
    for t in random_tokens(2 * C, seed=6):
        if e.rolls == 0 and e.position == e.roll_at + 5:
            gate.set()  # the re-encode ends with 5 tokens to catch up
            finished.wait(10)
        if e.rolls == 1 and waiter is None:
            gate.clear()  # the next one is late: the window fills and the engine waits
            waiter = threading.Thread(target=release_when_waiting)
            waiter.start()
        logits = e.step(t)
        np.testing.assert_allclose(logits, reference(e.context_tokens)[-1], atol=TOL)
        assert e.position <= C
    waiter.join()
    assert e.rolls >= 2 and e.roll_waits >= 1


def test_rewind_and_reset_do_not_wait_for_a_reencode(tiny, monkeypatch):
    d, reference = tiny
    gate, lock = threading.Event(), threading.Lock()
    reencode = Engine._reencode
    seen = {"active": 0, "most": 0, "timeouts": 0}

    def slow(roll, runner):
        with lock:
            seen["active"] += 1
            seen["most"] = max(seen["most"], seen["active"])
        if not gate.wait(3):
            seen["timeouts"] += 1  # the engine waited for a dropped re-encode
        reencode(roll, runner)
        with lock:
            seen["active"] -= 1

    monkeypatch.setattr(Engine, "_reencode", staticmethod(slow))
    e = Engine(d, provider="cpu", background=True, inline_chunk=0)  # a background thread
    toks = random_tokens(C, seed=8)
    e.feed(toks[: e.roll_at])
    assert e.rolling
    e.rewind(3)  # returns at once: the re-encode is still held at the gate
    assert not e.rolling and not gate.is_set()
    logits = e.feed(toks[e.roll_at :])  # on past the threshold: no new roll while it writes
    np.testing.assert_allclose(logits, reference(e.context_tokens)[-1], atol=TOL)
    e.reset("folk")
    assert not gate.is_set() and e.context_tokens == [tk.style_token(3)]
    gate.set()
    for t in random_tokens(2 * C, seed=9):
        logits = e.step(t)
    np.testing.assert_allclose(logits, reference(e.context_tokens)[-1], atol=TOL)
    e.close()
    assert e.rolls >= 1
    assert seen["timeouts"] == 0  # rewind and reset never waited
    assert seen["most"] == 1  # and never two re-encodes writing the spare cache at once


def test_a_long_feed_is_chunked_to_fit_the_window(tiny):
    d, reference = tiny
    for background in (False, True):
        e = Engine(d, provider="cpu", background=background)
        toks = random_tokens(5 * C, seed=4)
        logits = e.feed(toks)
        assert e.rolls >= 4 and e.position <= C
        np.testing.assert_allclose(logits, reference(e.context_tokens)[-1], atol=TOL)


def test_rewind_forgets_the_tail(tiny):
    d, reference = tiny
    e = Engine(d, provider="cpu", background=False, style="folk")
    toks = random_tokens(30, seed=7)
    e.feed(toks)
    e.rewind(10)
    assert e.context_tokens == [tk.style_token(3)] + toks[:20]
    logits = e.feed(toks[25:28])
    np.testing.assert_allclose(logits, reference(e.context_tokens)[-1], atol=TOL)


def test_sampled_stream_keeps_the_grammar_through_the_rolling_window(tiny):
    d, _ = tiny
    e = Engine(d, provider="cpu", background=False, style="folk")
    s = Sampler(Constraints(max_note_ticks=48), seed=0)
    s.observe(tk.style_token(3))
    out = []
    for _ in range(3 * C):
        out.append(s.sample(e.logits))
        s.observe(out[-1])
        e.step(out[-1])
    assert out[0] == tk.BAR  # the sampler's grammar, on the model's logits
    assert s.tick == sum(tk.shift_ticks(t) for t in out if tk.is_time_shift(t))
    assert e.context_tokens[-5:] == out[-5:]
    assert all(n.end - n.start <= 48 for n in tk.decode_notes(out))


def test_auto_provider_runs_cpu_here_and_says_so_only_where_a_gpu_was_expected(tiny, caplog):
    from improv.live.providers import gpu_expected

    d, _ = tiny
    with caplog.at_level(logging.INFO, logger="improv.live.engine"):
        e = Engine(d, provider="auto", background=False)
    if e.provider == "cpu":
        lines = [r.getMessage() for r in caplog.records if r.name == "improv.live.engine"]
        assert len(lines) == (1 if gpu_expected() else 0), lines
        with pytest.raises(ModelError, match="cuda"):
            Engine(d, provider="cuda")
    else:  # a machine with a working GPU: the CUDA path must give the same logits
        cpu = Engine(d, provider="cpu", background=False)
        toks = random_tokens(2 * C, seed=5)
        np.testing.assert_allclose(e.feed(toks), cpu.feed(toks), atol=1e-3)


def test_missing_or_corrupt_models_raise_model_error(tiny, tmp_path):
    d, _ = tiny
    with pytest.raises(ModelError, match="does not exist"):
        Engine(tmp_path / "nowhere")
    for i, (name, damage) in enumerate([
        ("model.onnx", None),
        ("model.onnx", b"this is not onnx"),
        ("config.json", b"{not json"),
        ("vocab.json", json.dumps({"tokens": ["PAD"], "styles": {}}).encode()),
        ("config.json", json.dumps({"vocab_size": 307}).encode()),
    ]):
        broken = tmp_path / f"broken{i}"
        shutil.copytree(d, broken)
        if damage is None:
            (broken / name).unlink()
        else:
            (broken / name).write_bytes(damage)
        with pytest.raises(ModelError) as err:
            Engine(broken, provider="cpu")
        msg = str(err.value)
        assert "\n" not in msg and str(broken) in msg, msg
    with pytest.raises(ModelError, match="style"):
        Engine(d, provider="cpu").reset("bebop")


def test_engine_module_never_imports_torch():
    code = "import sys, improv.live.engine, improv.live.sampler; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_cpu_only_machine_says_nothing_about_cuda_and_an_expected_gpu_gets_one_line(
        tiny_model_dir, monkeypatch, caplog):
    import logging

    from improv.live import providers

    caplog.set_level(logging.INFO, logger="improv")
    probed: list[str] = []
    monkeypatch.setattr(providers, "_probe_cuda",
                        lambda *a: probed.append("probe") or "no GPU answered the probe")
    monkeypatch.setattr(providers, "gpu_expected", lambda: False)
    assert Engine(tiny_model_dir, provider="auto").provider == "cpu"
    assert not probed and "CUDA" not in caplog.text and "GPU" not in caplog.text
    monkeypatch.setattr(providers, "gpu_expected", lambda: True)
    assert Engine(tiny_model_dir, provider="auto").provider == "cpu"
    lines = [r.getMessage() for r in caplog.records if "GPU" in r.getMessage()]
    assert probed == ["probe"] and len(lines) == 1 and "no GPU answered" in lines[0]
    with pytest.raises(ModelError, match="provider cuda was asked for"):
        Engine(tiny_model_dir, provider="cuda")


def test_gpu_expected_reads_the_device_node_and_cuda_visible_devices(monkeypatch):
    from improv.live import providers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert providers.gpu_expected() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert providers.gpu_expected() is True
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert providers.gpu_expected() == os.path.exists("/dev/nvidia0")


def test_stats_report_the_idle_time_before_steps(tiny):
    """The jam's decode step is compared with steps alone after the same pause
    (bench/suite.py): the engine has to say how long that pause was."""
    d, _ = tiny
    e = Engine(d, provider="cpu", background=False, style="folk")
    e.feed([tk.BAR])
    for _ in range(5):
        e.step(tk.BAR)  # back to back
    assert e.stats.gap_median_ms < 5.0
    for _ in range(10):
        time.sleep(0.02)
        e.step(tk.BAR)
    assert e.stats.gap_median_ms >= 19.0  # 10 of 15 steps came after 20 ms of nothing
