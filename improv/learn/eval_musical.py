"""Continuations of held-out prompts, and the musical figures ``improv eval`` reports on them.

This module owns generation for evaluation and what a continuation is measured by:

* prompts: the first bars of a held-out piece (``make_prompt``, ``choose_prompts``);
* generation with temperature and top-p, for the model (``generate_model``, KV-cached
  through :class:`Window`, which rolls the context as the live engine does) and for the
  n-gram baseline (``generate_ngram``);
* musical figures: the key of a prompt (Krumhansl-Schmuckler), how many notes stay in it,
  note density, and 8-note pitch sequences copied from the training split
  (``MemorizationIndex``).
"""

from __future__ import annotations

import numpy as np
import torch

from improv.core import tokens as tk
from improv.core.key_finder import infer_key
from improv.core.keys import MODES
from improv.learn.baseline import NGramModel
from improv.learn.model import ModelError

MEMO_N = 8
MAJOR_SCALE, MINOR_SCALE = MODES["major"], MODES["minor"]  # natural minor
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Never part of a continuation: the sampler in the live path forbids them too.
BANNED = [tk.PAD] + [tk.style_token(k) for k in range(tk.N_STYLES)]


def model_context(model) -> int:
    return int((getattr(model, "cfg", None) or model.config).context)


# --- musical figures ---------------------------------------------------------------------


def note_on_pitches(toks) -> np.ndarray:
    """MIDI pitches of the NOTE_ON tokens, in order."""
    return np.array([e.pitch for e in tk.decode_tokens(toks) if e.velocity > 0], dtype=np.int64)


def estimate_key(toks) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor"): the key finder (improv.core.key_finder) on the
    duration-weighted pitch-class histogram (note counts when nothing has a duration); C major
    when there is nothing to go on."""
    hist = np.zeros(12)
    for n in tk.decode_notes(toks):
        hist[n.pitch % 12] += n.end - n.start
    if not hist.any():
        hist += np.bincount(note_on_pitches(toks) % 12, minlength=12)
    key = infer_key(hist)
    return (0, "major") if key is None else (key.tonic, key.mode)


def in_key(pitches: np.ndarray, key: tuple[int, str]) -> int:
    """How many of ``pitches`` belong to the key's diatonic scale."""
    scale = MAJOR_SCALE if key[1] == "major" else MINOR_SCALE
    return int(np.isin((np.asarray(pitches) - key[0]) % 12, scale).sum())


def notes_per_quarter(toks) -> float:
    """Note-ons per quarter; a stretch with (almost) no time counts as one quarter long."""
    ticks = sum(tk.shift_ticks(t) for t in map(int, toks) if tk.is_time_shift(t))
    return len(note_on_pitches(toks)) / max(ticks / tk.TICKS_PER_QUARTER, 1.0)


def density_ratio(prompt, continuation) -> float | None:
    base = notes_per_quarter(prompt)
    return notes_per_quarter(continuation) / base if base > 0 else None


def pitch_ngrams(pitches: np.ndarray, n: int = MEMO_N) -> np.ndarray:
    """Each run of n consecutive pitches packed exactly into one int64 (7 bits a pitch)."""
    p = np.asarray(pitches, dtype=np.int64) - tk.LOWEST_PITCH
    if len(p) < n:
        return np.zeros(0, np.int64)
    key = np.zeros(len(p) - n + 1, np.int64)
    for j in range(n):
        key = (key << 7) | p[j : len(p) - n + 1 + j]
    return key


class MemorizationIndex:
    """Every 8-note NOTE_ON pitch sequence of the training pieces (as stored, untransposed)."""

    def __init__(self, pieces, n: int = MEMO_N):
        self.n = n
        grams = []
        for toks in pieces:
            t = np.asarray(toks, dtype=np.int64)
            on = t[(t >= tk.NOTE_ON_BASE) & (t < tk.NOTE_OFF_BASE)] - tk.NOTE_ON_BASE
            grams.append(pitch_ngrams(on + tk.LOWEST_PITCH, n))
        self.keys = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.int64)

    def count(self, pitches) -> tuple[int, int]:
        """(n-grams found in training, n-grams in ``pitches``)."""
        g = pitch_ngrams(pitches, self.n)
        return int(np.isin(g, self.keys, assume_unique=False).sum()), len(g)


# --- generation --------------------------------------------------------------------------


def sample_top_p(probs: np.ndarray, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row of ``probs`` [B, V] from the smallest set holding ``top_p`` of the mass."""
    order = np.argsort(-probs, axis=1, kind="stable")
    sp = np.take_along_axis(probs, order, axis=1)
    cum = np.cumsum(sp, axis=1)
    sp = np.where(cum - sp < top_p * cum[:, -1:], sp, 0.0)  # always keeps the most likely
    cum = np.cumsum(sp, axis=1)
    u = rng.random((len(probs), 1)) * cum[:, -1:]
    pick = np.minimum((cum <= u).sum(axis=1), probs.shape[1] - 1)
    return order[np.arange(len(probs)), pick]


def _tempered(logp: np.ndarray, temperature: float) -> np.ndarray:
    logp = logp.astype(np.float64)
    logp[:, BANNED] = -np.inf
    z = logp / max(temperature, 1e-6)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


class Window:
    """One prompt's context while it is continued: [STYLE] + its latest tokens, KV-cached.

    The policy is the live engine's (improv.live.engine) with the re-encode done in place:
    each new token is one cached step while the window has room; when it is full,
    [STYLE] + the last C/2 tokens are re-encoded from position 0 with the new token.
    So the model always sees what it was trained on, a STYLE token at position 0
    followed by a crop, and a step costs one token, not a window.
    """

    def __init__(self, model, prompt, device="cpu"):
        C = model_context(model)
        if C < 2:
            raise ModelError(f"model context {C} is too small to generate: use a context >= 2")
        self.model, self.device, self.context = model, device, C
        self.keep = min(C // 2, C - 2)  # [STYLE] + keep + the new token fit the window
        body = [int(t) for t in prompt[1:]]
        self.tokens = [int(prompt[0]), *body[max(0, len(body) - (C - 1)) :]]
        self.keys, self.values = model.empty_cache()
        self.logits = self._encode(self.tokens, 0)

    def push(self, token: int) -> torch.Tensor:
        """Append one token; the logits [V] for the next."""
        if len(self.tokens) >= self.context:
            kept = self.tokens[len(self.tokens) - self.keep :]
            self.tokens = [self.tokens[0], *kept, int(token)]
            self.logits = self._encode(self.tokens, 0)  # stale slots past it are masked
        else:
            self.tokens.append(int(token))
            self.logits = self._encode(self.tokens[-1:], len(self.tokens) - 1)
        return self.logits

    def _encode(self, toks: list[int], position: int) -> torch.Tensor:
        x = torch.tensor([toks], dtype=torch.long, device=self.device)
        logits, k, v = self.model.forward_cached(x, position, self.keys, self.values)
        self.keys[:, :, :, position : position + len(toks)] = k
        self.values[:, :, :, position : position + len(toks)] = v
        return logits[0, -1]


@torch.no_grad()
def generate_model(model, prompts, n_tokens, temperature=1.0, top_p=0.95, seed=0, device="cpu",
                   batch_size=32) -> list[np.ndarray]:
    """Continue each prompt, one KV-cached step a token (see :class:`Window`).

    The prompts of a batch advance in lockstep and share one generator, a row of draws a
    step, as the full-recompute loop this replaced did: while a sequence fits the context
    the two draw the same tokens from the same seed (a test checks).
    """
    rng, outs = np.random.default_rng(seed), []
    for b0 in range(0, len(prompts), batch_size):
        windows = [Window(model, p, device) for p in prompts[b0 : b0 + batch_size]]
        gen: list[list[int]] = [[] for _ in windows]
        for i in range(n_tokens):
            logits = torch.stack([w.logits for w in windows])
            logp = torch.log_softmax(logits.float()[:, : tk.VOCAB_SIZE], dim=-1).cpu().numpy()
            picks = sample_top_p(_tempered(logp, temperature), top_p, rng)
            for w, g, t in zip(windows, gen, picks, strict=True):
                g.append(int(t))
                if i + 1 < n_tokens:
                    w.push(int(t))
        outs += [np.array(g, dtype=np.int64) for g in gen]
    return outs


def generate_ngram(ngram: NGramModel, prompts, n_tokens, temperature=1.0, top_p=0.95,
                   seed=0) -> list[np.ndarray]:
    rng, outs = np.random.default_rng(seed), []
    for p in prompts:
        seq = list(map(int, p))
        for _ in range(n_tokens):
            probs = _tempered(np.log(ngram.next_distribution(seq))[None], temperature)
            seq.append(int(sample_top_p(probs, top_p, rng)[0]))
        outs.append(np.array(seq[len(p):], dtype=np.int64))
    return outs


def make_prompt(piece: np.ndarray, bars: int = 8, max_tokens: int = 512,
                n_tokens: int | None = None) -> np.ndarray | None:
    """The first ``bars`` bars of a piece (fewer whole bars where they pass ``max_tokens``),
    or its first ``n_tokens``; None if the piece is not longer than that."""
    if n_tokens:
        return piece[:n_tokens] if len(piece) > n_tokens else None
    lines = np.flatnonzero(piece == tk.BAR)  # lines[b] starts bar b + 1
    fits = np.flatnonzero(lines[1 : bars + 1] <= max_tokens)
    if len(lines) <= bars or not len(fits):
        return None
    return piece[: lines[fits[-1] + 1]]


def choose_prompts(pieces, styles, n, gen_tokens, seed, **prompt_args) -> list[tuple]:
    """Up to n (piece index, prompt) pairs, round-robin over styles (random within a style),
    each from a piece with ``gen_tokens`` true continuation tokens after the prompt."""
    rng = np.random.default_rng(seed)
    by_style: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i in rng.permutation(len(pieces)):
        pr = make_prompt(pieces[i], **prompt_args)
        if pr is not None and len(pieces[i]) >= len(pr) + gen_tokens:
            by_style.setdefault(int(styles[i]), []).append((int(i), pr))
    chosen: list[tuple[int, np.ndarray]] = []
    queues = [by_style[s] for s in sorted(by_style)]
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen
