"""The Kneser-Ney baseline: proper distributions, learns structure, persists exactly."""

import numpy as np
import pytest

from improv.core import tokens as tk
from improv.learn.baseline import BaselineError, NGramModel


def motif_corpus(n_pieces: int, seed: int) -> list[list[int]]:
    """Pieces stitched from a small shared set of motifs: predictable given a few tokens."""
    rng = np.random.default_rng(1234)  # the motifs are the same for every call
    motifs = [rng.integers(tk.TIME_SHIFT_BASE, tk.VOCAB_SIZE, size=6) for _ in range(12)]
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(n_pieces):
        style = int(rng.integers(0, 5))
        body = np.concatenate([motifs[i] for i in rng.integers(0, len(motifs), size=20)])
        pieces.append([tk.style_token(style), *body.tolist()])
    return pieces


@pytest.fixture(scope="module")
def train():
    return motif_corpus(60, seed=1)


@pytest.fixture(scope="module")
def model(train):
    return NGramModel(order=4).fit(train)


def test_distributions_sum_to_one_for_seen_and_unseen_contexts(model, train):
    seen = train[0][:10]
    unseen = [tk.style_token(9), tk.BAR, tk.TURN, tk.PAD + 1]
    for ctx in (seen, seen[:1], unseen, [], [tk.VOCAB_SIZE - 1] * 7):
        p = model.next_distribution(ctx)
        assert p.shape == (tk.VOCAB_SIZE,)
        assert p.min() > 0  # the uniform floor reaches every token
        assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_seen_continuation_is_likely(model, train):
    piece = train[0]
    p = model.next_distribution(piece[:12])
    assert p[piece[12]] > 0.1
    assert p.argmax() == piece[12] or p[piece[12]] > 10 / tk.VOCAB_SIZE


def test_higher_orders_beat_unigram_on_held_out(train):
    held_out = motif_corpus(15, seed=2)
    ce = {}
    for order in (1, 2, 4):
        lp = NGramModel(order).fit(train).corpus_logprobs(held_out)
        ce[order] = -np.concatenate(lp).mean()
    assert ce[4] < ce[2] < ce[1]
    assert ce[4] < 0.5 * ce[1]


def test_sequence_logprobs_equals_per_token_logprob(model):
    seq = motif_corpus(1, seed=3)[0][:40] + [tk.BAR, tk.TURN]  # ends on rarely seen tokens
    fast = model.sequence_logprobs(seq)
    slow = [model.logprob(seq[:i], seq[i]) for i in range(1, len(seq))]
    assert fast.shape == (len(seq) - 1,)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        [np.log(model.next_distribution(seq[:i])[seq[i]]) for i in range(1, len(seq))], slow
    )


def test_corpus_logprobs_matches_sequence_logprobs(model):
    seqs = motif_corpus(3, seed=4)
    seqs[1] = seqs[1][:1]  # a piece with nothing to predict
    batch = model.corpus_logprobs(seqs)
    assert [len(b) for b in batch] == [len(s) - 1 for s in seqs]
    for b, s in zip(batch, seqs, strict=True):
        np.testing.assert_allclose(b, model.sequence_logprobs(s))


def test_save_load_identical(model, tmp_path):
    path = tmp_path / "ng.npz"
    model.save(path)
    again = NGramModel.load(path)
    assert (again.order, again.vocab_size, again.n_tokens) == (4, tk.VOCAB_SIZE, model.n_tokens)
    seq = motif_corpus(1, seed=5)[0]
    np.testing.assert_array_equal(again.sequence_logprobs(seq), model.sequence_logprobs(seq))
    ctx = seq[:7]
    np.testing.assert_array_equal(again.next_distribution(ctx), model.next_distribution(ctx))


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(BaselineError, match="no tokens"):
        NGramModel(3).fit([])
    with pytest.raises(BaselineError, match="vocabulary"):
        NGramModel(3).fit([[tk.style_token(0), tk.VOCAB_SIZE]])
    with pytest.raises(BaselineError, match="not fitted"):
        NGramModel(3).next_distribution([tk.style_token(0)])
    with pytest.raises(BaselineError, match="order"):
        NGramModel(40)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BaselineError, match="delete it"):
        NGramModel.load(bad)


def reference_kn(seqs: list[list[int]], order: int, vocab: int):
    """Interpolated modified Kneser-Ney straight from the formulas, with dicts."""
    from collections import Counter, defaultdict

    counts = {order: Counter()}
    for s in seqs:
        p = [tk.PAD] * (order - 2) + s
        for i in range(order - 1, len(p)):
            counts[order][tuple(p[i - order + 1 : i + 1])] += 1
    for n in range(order - 1, 0, -1):
        counts[n] = Counter()
        for g, k in counts[n + 1].items():
            counts[n][g[1:]] += k if g[1] == tk.PAD else 1  # piece starts keep raw counts
    disc, hists = {}, {}
    for n, c in counts.items():
        nk = [sum(1 for v in c.values() if v == k) for k in (1, 2, 3, 4)]
        disc[n] = (0.5, 1.0, 1.5)  # the documented fallback for degenerate count-of-counts
        if min(nk) > 0:
            y = nk[0] / (nk[0] + 2 * nk[1])
            est = (1 - 2 * y * nk[1] / nk[0], 2 - 3 * y * nk[2] / nk[1], 3 - 4 * y * nk[3] / nk[2])
            fallback = disc[n]
            disc[n] = tuple(est[i] if 0 < est[i] < i + 1 else fallback[i] for i in range(3))
        hists[n] = defaultdict(list)
        for g, v in c.items():
            hists[n][g[:-1]].append(v)

    def prob(ctx, w, n=order):
        lower = 1 / vocab if n == 1 else prob(ctx[1:], w, n - 1)
        h = tuple(ctx[len(ctx) - (n - 1) :]) if n > 1 else ()
        if h not in hists[n]:
            return lower
        vals = hists[n][h]
        d = disc[n]
        gamma = sum(d[min(v, 3) - 1] for v in vals)
        c = counts[n].get((*h, w), 0)
        top = max(c - d[min(c, 3) - 1], 0) if c else 0
        return (top + gamma * lower) / sum(vals)

    def logprob(context, w):
        ctx = ([tk.PAD] * order + list(context))[-(order - 1) :]
        return np.log(prob(ctx, w))

    return logprob


def test_matches_reference_implementation():
    # A small alphabet with a first-order drift gives every count-of-count at every order.
    rng = np.random.default_rng(7)
    seqs = []
    for _ in range(40):
        steps = np.cumsum(rng.integers(-6, 7, size=120)) % 80
        seqs.append([tk.style_token(int(rng.integers(0, 3)))] + (tk.NOTE_ON_BASE + steps).tolist())
    ref = reference_kn(seqs[:35], 3, tk.VOCAB_SIZE)
    m = NGramModel(3).fit(seqs[:35])
    for seq in seqs[34:]:
        want = [ref(seq[:i], seq[i]) for i in range(1, 40)]
        np.testing.assert_allclose(m.sequence_logprobs(seq[:40]), want, rtol=1e-10)
