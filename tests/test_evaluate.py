"""improv eval: window scoring, musical figures, cached generation, the gate, end to end."""

import json

import numpy as np
import pytest
import torch

from improv.core import tokens as tk
from improv.learn import eval_musical as mu
from improv.learn import evaluate as ev
from improv.learn.dataset import write_split
from improv.learn.model import GPT, ModelConfig, save_model

SCALE_C = [60, 62, 64, 65, 67, 69, 71, 72]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def melody(pitches, dur=12, style=0) -> list[int]:
    notes = [tk.Note(i * dur, (i + 1) * dur, p, 80) for i, p in enumerate(pitches)]
    return tk.encode_notes(notes, style=style)


def tiny_gpt(context=24, seed=0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, context=context)
    return GPT(cfg).eval()


# --- scoring -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, context", [(1, 8), (7, 8), (8, 8), (50, 8), (51, 9), (200, 33), (5, 2)]
)
def test_window_plan_scores_every_token_once(n, context):
    plan = ev.window_plan(n, context)
    scored = []
    for s, end, first in plan:
        assert end - s <= context - 1  # STYLE + the window fits the context
        assert s < first <= end
        if first > 1:  # later windows keep at least half a window of left context
            assert first - s - 1 >= (context - 1) - max(1, (context - 1) // 2)
        scored += range(first, end + 1)
    assert scored == list(range(1, n + 1))


def test_one_window_equals_full_sequence_scoring():
    model = tiny_gpt(context=64)
    piece = np.array(melody(SCALE_C))
    assert len(piece) <= 64
    (nll,) = ev.model_nll(model, [piece])
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(piece[None]).long())
    logp = torch.log_softmax(logits[0].float(), -1)
    want = -logp[torch.arange(len(piece) - 1), torch.from_numpy(piece[1:]).long()].numpy()
    np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-6)


def test_long_pieces_use_windows_with_style_at_position_zero():
    context = 16
    model = tiny_gpt(context=context)
    piece = np.array(melody(SCALE_C * 6, style=2))
    short = np.array(melody(SCALE_C[:3], style=1))
    nll = ev.model_nll(model, [piece, short], batch_size=3)
    assert [len(x) for x in nll] == [len(piece) - 1, len(short) - 1]
    assert np.isfinite(nll[0]).all() and (nll[0] > 0).all()
    # Recompute each token from its window by hand.
    want = np.empty(len(piece) - 1)
    for s, end, first in ev.window_plan(len(piece) - 1, context):
        x = np.concatenate([[piece[0]], piece[s + 1 : end + 1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.from_numpy(x[None]).long())[0][0].float(), -1)
        for q in range(first, end + 1):
            want[q - 1] = -logp[q - s - 1, int(piece[q])].item()
    np.testing.assert_allclose(nll[0], want, rtol=1e-5, atol=1e-6)


# --- musical figures ---------------------------------------------------------------------


def test_key_of_c_major_and_a_minor_scales():
    up_down = SCALE_C + SCALE_C[-2::-1]
    assert mu.estimate_key(melody(up_down)) == (0, "major")
    a_minor = [57, 59, 60, 62, 64, 65, 67, 69]
    assert mu.estimate_key(melody(a_minor + a_minor[-2::-1])) == (9, "minor")
    assert mu.estimate_key(melody([p + 2 for p in up_down])) == (2, "major")


def test_in_key_share():
    assert mu.in_key(np.array(SCALE_C), (0, "major")) == 8
    assert mu.in_key(np.array([61, 63, 66, 68, 70]), (0, "major")) == 0
    assert mu.in_key(np.array([57, 60, 64, 68]), (9, "minor")) == 3  # G# is not natural minor


def test_density_ratio():
    prompt = melody(SCALE_C, dur=24)  # one note a quarter
    assert mu.notes_per_quarter(prompt) == pytest.approx(1.0)
    assert mu.density_ratio(prompt, melody(SCALE_C * 2, dur=12)) == pytest.approx(2.0)
    assert mu.density_ratio(prompt, melody([60], dur=96)) == pytest.approx(0.25)
    assert mu.density_ratio(melody([]), prompt) is None


def test_memorization():
    rng = np.random.default_rng(0)
    train = [melody(rng.integers(40, 90, size=60).tolist()) for _ in range(5)]
    index = mu.MemorizationIndex(train)
    copy = train[2][10:200]
    found, total = index.count(mu.note_on_pitches(copy))
    assert total > 20 and found == total
    fresh = mu.note_on_pitches(melody(rng.integers(21, 109, size=60).tolist()))
    found, total = index.count(fresh)
    assert total == 53 and found / total < 0.05
    assert index.count(np.array(SCALE_C[:7])) == (0, 0)


def test_pitch_ngram_keys_are_exact():
    low, high = tk.LOWEST_PITCH, tk.HIGHEST_PITCH
    a = mu.pitch_ngrams([low, low + 64] + [low] * 6)
    b = mu.pitch_ngrams([low + 1, low] + [low] * 6)
    assert len(a) == len(b) == 1 and a[0] != b[0]
    rng = np.random.default_rng(1)
    grams = rng.integers(low, high + 1, size=(3000, 8))
    grams[:, 0] = high  # the top bits in use
    keys = np.concatenate([mu.pitch_ngrams(g) for g in grams])
    assert len(np.unique(keys)) == len(np.unique(grams, axis=0))


def test_prompts_are_whole_bars_with_a_true_continuation():
    piece = np.array(melody(SCALE_C * 4, dur=48))  # two notes a bar, 16 bars
    bars = np.flatnonzero(piece == tk.BAR)
    assert len(bars) == 17  # 16 bars and the line where the last one ends
    np.testing.assert_array_equal(mu.make_prompt(piece, bars=8), piece[: bars[8]])
    short = mu.make_prompt(piece, bars=8, max_tokens=int(bars[3]))
    np.testing.assert_array_equal(short, piece[: bars[3]])  # fewer whole bars when too long
    assert mu.make_prompt(piece, bars=17) is None
    assert len(mu.make_prompt(piece, n_tokens=10)) == 10
    other = np.array(melody(SCALE_C[:4], style=1))  # too short for 8 bars
    chosen = mu.choose_prompts([piece, other, piece], [0, 1, 2], 5, 20, seed=0, bars=8)
    assert sorted(i for i, _ in chosen) == [0, 2]
    assert mu.choose_prompts([piece], [0], 5, len(piece), seed=0, bars=8) == []


def test_top_p_keeps_the_nucleus():
    rng = np.random.default_rng(0)
    probs = np.array([[0.5, 0.3, 0.15, 0.05]] * 2000)
    picks = mu.sample_top_p(probs, 0.9, rng)
    assert set(picks.tolist()) == {0, 1, 2}
    assert abs((picks == 0).mean() - 0.5 / 0.95) < 0.05
    assert (mu.sample_top_p(probs[:5], 1e-9, rng) == 0).all()


# --- generation --------------------------------------------------------------------------


def full_recompute_generate(model, prompts, n_tokens, temperature, top_p, seed):
    """The generation loop evaluate.py had before the KV cache: [STYLE] + the last C-1
    tokens recomputed at every step, the rows of a batch drawn together."""
    C, rng = model.cfg.context, np.random.default_rng(seed)
    batch = [list(map(int, p)) for p in prompts]
    gen = [[] for _ in batch]
    for _ in range(n_tokens):
        rows = [[p[0]] + (p[1:] + g)[-(C - 1) :] for p, g in zip(batch, gen, strict=True)]
        logits = []
        with torch.no_grad():
            for row in rows:
                logits.append(model(torch.tensor([row]))[0][0, -1])
        logp = torch.log_softmax(torch.stack(logits).float(), dim=-1).numpy()
        picks = mu.sample_top_p(mu._tempered(logp, temperature), top_p, rng)
        for g, t in zip(gen, picks, strict=True):
            g.append(int(t))
    return gen


def test_cached_window_matches_full_recompute_logits():
    context = 16
    model = tiny_gpt(context=context, seed=3)
    prompt = np.array(melody(SCALE_C[:3], style=2))  # 10 tokens: the window fills, then rolls
    assert len(prompt) < context
    w = mu.Window(model, prompt)
    rng = np.random.default_rng(0)
    fed = list(map(int, prompt))
    rolls = 0
    for _ in range(40):
        with torch.no_grad():
            want = model(torch.tensor([w.tokens]))[0][0, -1]
        torch.testing.assert_close(w.logits, want, rtol=1e-4, atol=1e-5)
        if len(fed) <= context:  # before the first roll: the old policy's window exactly
            assert w.tokens == [fed[0]] + fed[1:][-(context - 1) :]
        tok = int(rng.integers(tk.TIME_SHIFT_BASE, tk.VOCAB_SIZE))
        full = len(w.tokens) == context
        w.push(tok)
        fed.append(tok)
        if full:  # rolled: STYLE, the last C/2 tokens, the new one
            rolls += 1
            assert w.tokens == [fed[0]] + fed[-(context // 2) - 1 :]
        assert len(w.tokens) <= context and w.tokens[0] == fed[0]
    assert rolls >= 3
    long = np.array(melody(SCALE_C * 2, style=2))  # longer than the window: cropped
    w = mu.Window(model, long)
    assert w.tokens == [int(long[0])] + long[1:].tolist()[-(context - 1) :]
    with torch.no_grad():
        want = model(torch.tensor([w.tokens]))[0][0, -1]
    torch.testing.assert_close(w.logits, want, rtol=1e-4, atol=1e-5)


def test_cached_generation_draws_what_full_recompute_drew():
    model = tiny_gpt(context=48, seed=1)
    prompts = [np.array(melody(SCALE_C[:4], style=0)), np.array(melody(SCALE_C[3:], style=2))]
    n = 48 - max(map(len, prompts))  # everything fits the context: no roll
    got = mu.generate_model(model, prompts, n, temperature=1.0, top_p=0.9, seed=7)
    want = full_recompute_generate(model, prompts, n, 1.0, 0.9, seed=7)
    assert [g.tolist() for g in got] == want
    assert all(len(g) == n for g in got)
    long = mu.generate_model(model, prompts, 3 * n, seed=2, batch_size=1)  # rolls on the way
    assert [len(g) for g in long] == [3 * n, 3 * n]
    assert not any(int(t) in mu.BANNED for g in long for t in g)


def test_gate():
    def row(tokens, model_ppl, ngram_ppl):
        return {"tokens": tokens, "improvement": 1 - model_ppl / ngram_ppl}

    results = {"perplexity": {"styles": {
        "chorale": row(10_000, 3.0, 5.0), "folk": row(10_000, 4.0, 5.0), "mine": row(100, 9.0, 5.0),
    }}}
    assert ev.perplexity_gate(results) == ["folk"]
    assert ev.perplexity_gate(results, min_improvement=0.5) == ["chorale", "folk"]
    assert ev.perplexity_gate(results, min_tokens=50) == ["folk", "mine"]
    assert ev.gate_status(results["perplexity"]["styles"]["mine"]) == "too little data"


# --- end to end --------------------------------------------------------------------------


def synthetic_corpus(path, n_pieces, seed):
    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(n_pieces):
        style = i % 3
        walk = 60 + np.cumsum(rng.choice([-2, -1, 1, 2], size=70))
        pieces.append((f"synth/{i}", style, melody(np.clip(walk, 40, 90).tolist(), style=style)))
    return pieces


def test_eval_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_split(corpus, "train", synthetic_corpus(corpus, 30, seed=1))
    write_split(corpus, "val", synthetic_corpus(corpus, 6, seed=2))
    model_dir = save_model(tiny_gpt(context=48), tmp_path / "m", {"chorale": 0, "celtic": 2})
    out = tmp_path / "eval.json"
    argv = ["--model", str(model_dir), "--corpus", str(corpus), "--order", "3", "--json", str(out),
            "--prompts", "4", "--gen-tokens", "24", "--prompt-bars", "2", "--device", "cpu"]
    assert ev.main(argv) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"model", "corpus", "ngram", "perplexity", "generation", "gate"}
    styles = res["perplexity"]["styles"]
    assert set(styles) == {"chorale", "renaissance", "celtic"}  # names from vocab.json + defaults
    overall = res["perplexity"]["overall"]
    assert overall["tokens"] == sum(r["tokens"] for r in styles.values())
    assert overall["tokens"] == sum(len(p[2]) - 1 for p in synthetic_corpus(corpus, 6, seed=2))
    for key in ("model_nats", "model_bits", "model_ppl", "ngram_nats", "ngram_bits", "ngram_ppl",
                "improvement"):
        assert np.isfinite(overall[key])
    # A random model is near uniform; the n-gram has learnt the walk.
    assert overall["model_ppl"] > overall["ngram_ppl"]
    assert res["gate"]["failed"] == [] and res["gate"]["too_little_data"] == list(styles)
    gen = res["generation"]
    assert gen["settings"]["prompts"] == 4 and len(gen["prompts"]) == 4
    for src in ("model", "ngram", "reference"):
        figs = gen["overall"][src]
        assert set(figs) == {"prompts", "notes", "in_key", "density_ratio", "memorization"}
        assert all(len(p[src]["tokens"]) == 24 for p in gen["prompts"])
    assert "model ppl" in capsys.readouterr().out
    # Second run loads the cached n-gram.
    assert ev.main([*argv, "--prompts", "0"]) == 0
    assert "loaded" in capsys.readouterr().out


def test_eval_bad_input_exits_2(tmp_path, capsys):
    assert ev.main(["--model", str(tmp_path / "nope"), "--corpus", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "improv eval:" in err and "Traceback" not in err
