"""The real-time decoder: ONNX Runtime, a preallocated KV cache, a context that rolls.

This module owns running ``model.onnx`` (its contract: improv/export.py) one token at a
time. ``Engine`` loads a model directory, picks the execution provider, keeps
the keys and values of every token in the window in a preallocated cache and
hands back the logits of the last token. It never imports torch.

The step. On the CPU the cache is two numpy arrays ``[L, 1, H, C, D]`` bound to
the session once through IO binding (``OrtValue.ortvalue_from_numpy`` shares
the array's memory), as are the token, the position and the outputs. A step
writes two integers, runs, and copies the new token's keys and values (L*H*D
floats) into their slot; nothing O(C) is copied. bench/decode.py measured it
(5-layer d192 model, one thread): a bound step costs the same as plain
``session.run`` with numpy inputs (ORT wraps contiguous float32 arrays without
copying), while copying the cache each step adds 0.1 ms at C = 512 and 0.37 ms
at C = 1024 to a 0.35 ms step. On CUDA the cache stays on the GPU as OrtValues
and ``cache_update.onnx`` writes the new slots into a second buffer that then
takes the first one's place (ping-pong).
That path has not run on a GPU yet; ``device_cache=False`` runs CUDA with the
host cache instead, to tell the two apart.

The rolling context. Positions never exceed the window C. When the window
reaches ``roll_at`` (75% of C), the engine re-encodes [STYLE, last K tokens]
(K = C/2) from position 0 into the spare cache. By default (``inline_chunk=8``)
it does so on its own thread, 8 snapshot tokens after each step, so a roll
spreads over K/8 steps, well inside the C/4 steps of headroom. Tokens that
arrive meanwhile are kept and encoded into the new cache together with the first
token after the re-encode ends, and the caches swap between two steps. The hot
path waits only if the window fills first (counted in ``stats.roll_waits``).

Why not a background thread (``inline_chunk=0``, still available): on this
2-core machine a second runnable thread is what stretches the hot path's tail.
Measured with the shipped model (bench/decode.py, idle machine): a background
re-encode gave a step median of 0.26 ms but single steps of 4 to 12 ms during
rolls; inline chunks of 8 give 1.2 ms median while a roll lasts and at most
2.4 ms, with nothing else ever competing for the cores. ``background=False``
re-encodes in one go, for tests and reproducible runs.

A step after a pause. A set steps the model a few times, then waits for the music: about
2.7 ms idle before each step in a dense jam (``stats.gap_median_ms``). After such a pause a step
reads its 9 MB of weights from memory again, not from cache: measured alone on this 2-core VM
(1 thread, ``bench/decode.py``'s ``ort_roll``), a median of 0.67 ms flat out, 1.13 ms paced one
step every 2 ms, 1.63 ms every 5 ms and 1.92 ms every 20 ms; a spinning wait costs the same as a
sleeping one (1.35 against 1.34-1.51 ms after 5 ms), so it is the caches, not the core going idle.
This is why the isolation bench compares a jam's step with steps alone after the same pause.

Why re-encode rather than slide a RoPE window over a ring buffer: the model then
always sees what it was trained on, a STYLE token at position 0 followed by a
crop of a piece, so style conditioning never scrolls out and there is no
attention-sink problem (a sliding window loses the first tokens that attention
leans on); positions stay below C, so rotary embeddings are exactly the trained
ones for an hour-long set; and the cost, one prefill of C/2 tokens every C/4
tokens, happens off the hot path.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from improv.core import tokens as tk
from improv.core.model_dir import ModelError as ModelError
from improv.core.model_dir import read_model_dir as read_model_dir
from improv.live.providers import onnx_session, pick_provider

log = logging.getLogger(__name__)

_OUTPUTS = ["logits", "new_keys", "new_values"]


# --- caches ------------------------------------------------------------------------------


@dataclass
class _Runner:
    """The sessions one thread runs: the decode graph and, on CUDA, the cache update."""

    decode: ort.InferenceSession
    update: ort.InferenceSession | None = None


class _HostCache:
    """Keys and values in numpy arrays; the step is bound once, so it copies nothing O(C)."""

    def __init__(self, hot: _Runner, shape: tuple[int, ...], vocab: int):
        self.keys = np.zeros(shape, np.float32)
        self.values = np.zeros(shape, np.float32)
        self._past = {"past_keys": ort.OrtValue.ortvalue_from_numpy(self.keys),
                      "past_values": ort.OrtValue.ortvalue_from_numpy(self.values)}
        new = shape[:3] + (1, shape[4])
        self._tok = np.zeros((1, 1), np.int64)
        self._pos = np.zeros(1, np.int64)
        self._logits = np.zeros((1, 1, vocab), np.float32)
        self._nk, self._nv = np.zeros(new, np.float32), np.zeros(new, np.float32)
        self._hot = hot.decode
        b = self._binding = hot.decode.io_binding()
        for name, arr in (("tokens", self._tok), ("position", self._pos)):
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        for name, ov in self._past.items():
            b.bind_ortvalue_input(name, ov)
        for name, arr in zip(_OUTPUTS, (self._logits, self._nk, self._nv), strict=True):
            b.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))

    def step(self, token: int, position: int) -> np.ndarray:
        self._tok[0, 0] = token
        self._pos[0] = position
        self._hot.run_with_iobinding(self._binding)
        self.keys[:, :, :, position] = self._nk[:, :, :, 0]
        self.values[:, :, :, position] = self._nv[:, :, :, 0]
        return self._logits[0, 0].copy()

    def run(self, runner: _Runner, toks: np.ndarray, position: int) -> np.ndarray:
        """Encode ``toks`` at ``position`` (prefill); logits of the last one."""
        feeds = {"tokens": ort.OrtValue.ortvalue_from_numpy(toks.reshape(1, -1)),
                 "position": ort.OrtValue.ortvalue_from_numpy(np.array([position], np.int64)),
                 **self._past}
        logits, nk, nv = runner.decode.run_with_ort_values(_OUTPUTS, feeds)
        end = position + toks.shape[0]
        self.keys[:, :, :, position:end] = nk.numpy()
        self.values[:, :, :, position:end] = nv.numpy()
        return logits.numpy()[0, -1].copy()


class _DeviceCache:
    """Keys and values as CUDA OrtValues, updated in place of a spare by cache_update.onnx.

    Untested here (no GPU on the machine this was written on): Engine(device_cache=False)
    runs CUDA with the host cache instead.
    """

    def __init__(self, hot: _Runner, shape: tuple[int, ...], device_id: int = 0):
        zeros = np.zeros(shape, np.float32)  # stale NaNs in ignored slots would leak through 0*NaN
        self._dev = ("cuda", device_id)
        self._hot = hot

        def buf() -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_numpy(zeros, *self._dev)

        self.cur = {"past_keys": buf(), "past_values": buf()}
        self.spare = {"past_keys": buf(), "past_values": buf()}

    def step(self, token: int, position: int) -> np.ndarray:
        return self.run(self._hot, np.array([token], np.int64), position)

    def run(self, runner: _Runner, toks: np.ndarray, position: int) -> np.ndarray:
        pos = np.array([position], np.int64)
        b = runner.decode.io_binding()
        b.bind_cpu_input("tokens", np.ascontiguousarray(toks.reshape(1, -1)))
        b.bind_cpu_input("position", pos)
        for name, ov in self.cur.items():
            b.bind_ortvalue_input(name, ov)
        b.bind_output("logits", "cpu")
        b.bind_output("new_keys", *self._dev)
        b.bind_output("new_values", *self._dev)
        runner.decode.run_with_iobinding(b)
        logits, nk, nv = b.get_outputs()
        for name, new in (("past_keys", nk), ("past_values", nv)):
            u = runner.update.io_binding()
            u.bind_ortvalue_input("past", self.cur[name])
            u.bind_ortvalue_input("new", new)
            u.bind_cpu_input("position", pos)
            u.bind_ortvalue_output("present", self.spare[name])
            runner.update.run_with_iobinding(u)
            self.cur[name], self.spare[name] = self.spare[name], self.cur[name]
        return logits.numpy()[0, -1].copy()


# --- the engine --------------------------------------------------------------------------


@dataclass
class EngineStats:
    median_ms: float
    p99_ms: float
    max_ms: float
    tokens_per_s: float
    steps: int
    rolls: int
    roll_waits: int
    provider: str
    gap_median_ms: float | None = None  # idle time before a step (since the engine last ran)


class _Roll:
    """One re-encode in flight: [STYLE, last K tokens] into the spare cache."""

    def __init__(self, snapshot: list[int], start_len: int, cache):
        self.snapshot, self.start_len, self.cache = snapshot, start_len, cache
        self.logits: np.ndarray | None = None
        self.encoded = 0  # snapshot tokens in the cache so far (inline re-encode)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None


class Engine:
    """Decodes one model directory token by token. Use it from one thread."""

    def __init__(
        self,
        model_dir: str | Path,
        provider: str = "auto",
        threads: int = 1,
        roll_at: float = 0.75,
        keep: int | None = None,
        background: bool = True,
        device_cache: bool = True,
        style: str | int | None = None,
        inline_chunk: int = 8,
    ):
        if provider not in ("auto", "cpu", "cuda"):
            raise ModelError(f"provider {provider!r} is unknown; use auto, cpu or cuda")
        self.model_dir = Path(model_dir)
        self.config, self.styles = read_model_dir(self.model_dir)
        c = self.config
        C = self.context = c["context"]
        self.shape = (c["n_layer"], 1, c["n_head"], C, c["d_model"] // c["n_head"])
        # roll_at > 1: re-encode only when the window is full (the hot path then waits).
        self.roll_at = C + 1 if roll_at > 1 else max(2, int(round(roll_at * C)))
        self.keep = min(keep if keep is not None else C // 2, self.roll_at - 1, C - 1)
        if self.keep < 1:
            raise ModelError(f"keep = {keep} leaves nothing to re-encode; use keep >= 1")
        self.background = background
        self.inline_chunk = max(0, inline_chunk) if background else 0
        self.provider = pick_provider(provider, self.model_dir / "model.onnx", threads, self.shape)
        path = self.model_dir / "model.onnx"
        self._threads = threads
        self._hot = self._runner(path)
        self._check_io(self._hot.decode)
        self._bg = self._runner(path) if background and not self.inline_chunk else self._hot
        on_device = self.provider == "cuda" and device_cache
        self._caches = [self._new_cache(on_device) for _ in range(2)]
        self._times = np.zeros(4096)
        # A step after a pause finds the weights out of cache and costs 2-3x one run flat out
        # (bench/decode.py's gap rows): the pause before each step says which figure to compare.
        self._gaps = np.zeros(4096)
        self._last_end = time.perf_counter()
        self._n_steps = 0
        self._busy_s = 0.0
        self._tokens_run = 0
        self.rolls = 0
        self.roll_waits = 0
        self._roll: _Roll | None = None
        self._abandoned: _Roll | None = None  # dropped, may still be writing the spare cache
        self.reset(style)

    def _runner(self, path: Path) -> _Runner:
        decode = onnx_session(path, self.provider, self._threads)
        update = None
        if self.provider == "cuda":
            update = onnx_session(self.model_dir / "cache_update.onnx", "cuda", self._threads)
        return _Runner(decode, update)

    def _check_io(self, sess: ort.InferenceSession) -> None:
        shapes = {i.name: i.shape for i in sess.get_inputs()}
        outs = [o.name for o in sess.get_outputs()]
        if shapes.get("past_keys") != list(self.shape) or sorted(outs) != sorted(_OUTPUTS):
            raise ModelError(
                f"{self.model_dir / 'model.onnx'} does not match config.json (cache "
                f"{shapes.get('past_keys')} vs {list(self.shape)}); re-export the model"
            )

    def _new_cache(self, on_device: bool) -> _HostCache | _DeviceCache:
        if on_device:
            return _DeviceCache(self._hot, self.shape)
        return _HostCache(self._hot, self.shape, self.config["vocab_size"])

    # --- public API ------------------------------------------------------------------------

    def style_token(self, style: str | int | None) -> int:
        if style is None:
            style = next(iter(self.styles), 0)
        if isinstance(style, str):
            if style not in self.styles:
                raise ModelError(
                    f"style {style!r} is not in this model; use one of {', '.join(self.styles)}"
                )
            style = self.styles[style]
        return tk.style_token(int(style))

    def reset(self, style: str | int | None = None) -> np.ndarray:
        """Start a new stream with the STYLE token at position 0; returns its logits."""
        self._style = self.style_token(style)
        self._drop_roll()
        self._window: list[int] = []
        self._pos = 0  # tokens of the window already in the live cache
        return self.feed([self._style])

    @property
    def position(self) -> int:
        """Slot of the next token (= tokens in the window)."""
        return len(self._window)

    @property
    def rolling(self) -> bool:
        """Whether a re-encode is in flight."""
        return self._roll is not None

    @property
    def context_tokens(self) -> list[int]:
        return list(self._window)

    def feed(self, toks: list[int] | np.ndarray) -> np.ndarray:
        """Append tokens (human events, a primer) in as few runs as fit; last token's logits."""
        arr = np.asarray(toks, dtype=np.int64).reshape(-1)
        if arr.size == 0:
            return self.logits
        if arr.min() < 0 or arr.max() >= self.config["vocab_size"]:
            raise ValueError(f"token ids must be in 0..{self.config['vocab_size'] - 1}")
        return self._advance(arr.tolist())

    def step(self, token: int) -> np.ndarray:
        """Append one token; the logits for the next."""
        if not 0 <= token < self.config["vocab_size"]:
            raise ValueError(f"token id {token} is outside 0..{self.config['vocab_size'] - 1}")
        t0 = time.perf_counter()
        gap = t0 - self._last_end
        logits = self._advance([int(token)])
        dt = time.perf_counter() - t0
        self._times[self._n_steps % self._times.shape[0]] = dt
        self._gaps[self._n_steps % self._gaps.shape[0]] = gap
        self._n_steps += 1
        return logits

    def rewind(self, n: int) -> None:
        """Forget the last ``n`` tokens (an answer cut short by the player).

        Slots past the position are masked by the graph, so this only moves the
        position back; a re-encode in flight is dropped without waiting, since its
        snapshot may hold the forgotten tokens. The STYLE token always stays. Feed before sampling:
        the logits of the new last token are not kept.
        """
        if n <= 0:
            return
        self._drop_roll()
        n = min(n, len(self._window) - 1)
        del self._window[len(self._window) - n :]
        self._pos = len(self._window)
        self.logits = None

    @property
    def stats(self) -> EngineStats:
        n = min(self._n_steps, self._times.shape[0])
        ms = self._times[:n] * 1e3 if n else np.zeros(1)
        gaps = self._gaps[:n] * 1e3 if n else np.zeros(1)
        return EngineStats(
            median_ms=float(np.median(ms)), p99_ms=float(np.percentile(ms, 99)),
            max_ms=float(ms.max()),
            tokens_per_s=self._tokens_run / self._busy_s if self._busy_s else 0.0,
            steps=self._n_steps, rolls=self.rolls, roll_waits=self.roll_waits,
            provider=self.provider, gap_median_ms=float(np.median(gaps)),
        )

    def twin(self) -> Engine:
        """A second decoder of the same model on the same provider (a guidance stream)."""
        return Engine(self.model_dir, provider=self.provider, threads=self._threads,
                      background=self.background)

    def close(self) -> None:
        """Wait for any re-encode thread to end (the engine stays usable)."""
        self._drop_roll()
        self._spare_free(wait=True)

    # --- the window ------------------------------------------------------------------------

    def _advance(self, toks: list[int]) -> np.ndarray:
        t0, i = time.perf_counter(), 0
        while i < len(toks):
            if self._roll is not None and self._roll.done.is_set():
                self._swap()
            if len(self._window) >= self.context:
                self._wait_roll()
            chunk = toks[i : i + self.context - len(self._window)]
            i += len(chunk)
            self._window.extend(chunk)
            self._encode()
            if len(self._window) >= self.roll_at and self._roll is None and self._spare_free():
                self._start_roll()
            elif self._roll is not None and self.inline_chunk:
                self._reencode_some(self._roll, self.inline_chunk)
        self._last_end = time.perf_counter()
        self._busy_s += self._last_end - t0
        self._tokens_run += len(toks)
        return self.logits

    def _encode(self) -> None:
        """Run the window's tokens that are not in the live cache yet."""
        live, todo = self._caches[0], self._window[self._pos :]
        if len(todo) == 1:
            self.logits = live.step(todo[0], self._pos)
        else:
            self.logits = live.run(self._hot, np.array(todo, np.int64), self._pos)
        self._pos = len(self._window)

    def _start_roll(self) -> None:
        snapshot = [self._style] + self._window[-self.keep :]
        roll = self._roll = _Roll(snapshot, len(self._window), self._caches[1])
        if not self.background:
            self._reencode(roll, self._hot)
            self._swap()
            return
        if self.inline_chunk:
            return
        roll.thread = threading.Thread(
            target=self._reencode, args=(roll, self._bg), name="improv-reencode"
        )
        roll.thread.start()

    @staticmethod
    def _reencode(roll: _Roll, runner: _Runner) -> None:
        try:
            roll.logits = roll.cache.run(runner, np.array(roll.snapshot, np.int64), 0)
        except BaseException as e:  # handed to the engine thread at the swap
            roll.error = e
        finally:
            roll.done.set()

    def _reencode_some(self, roll: _Roll, n: int) -> None:
        """The next ``n`` snapshot tokens of an inline re-encode, on this thread."""
        end = min(roll.encoded + n, len(roll.snapshot))
        toks = np.array(roll.snapshot[roll.encoded : end], np.int64)
        roll.logits = roll.cache.run(self._hot, toks, roll.encoded)
        roll.encoded = end
        if end == len(roll.snapshot):
            roll.done.set()

    def _wait_roll(self) -> None:
        if self._roll is None:
            self._spare_free(wait=True)
            self._start_roll()
        if self._roll is not None:  # a synchronous roll has swapped already
            self.roll_waits += 1
            if self._roll.thread is None and not self._roll.done.is_set():
                self._reencode_some(self._roll, len(self._roll.snapshot))
            self._roll.done.wait()
            self._swap()

    def _swap(self) -> None:
        """Make the re-encoded cache live; tokens that came meanwhile are encoded next."""
        roll, self._roll = self._roll, None
        if roll.thread is not None:
            roll.thread.join()
        if roll.error is not None:
            raise roll.error
        pending = self._window[roll.start_len :]
        self._window = roll.snapshot + pending
        self._pos = len(roll.snapshot)
        self._caches.reverse()
        self.logits = roll.logits
        self.rolls += 1

    def _drop_roll(self) -> None:
        """Forget a re-encode in flight without waiting for it (reset, rewind)."""
        if self._roll is not None and self._roll.thread is None:
            self._roll = None  # inline: nothing runs on
        elif self._roll is not None:
            self._spare_free(wait=True)  # at most one thread left behind
            self._abandoned, self._roll = self._roll, None

    def _spare_free(self, wait: bool = False) -> bool:
        """Whether no dropped re-encode is still writing the spare cache."""
        roll = self._abandoned
        if roll is None:
            return True
        if not roll.done.is_set() and not wait:
            return False
        roll.done.wait()
        if roll.thread is not None:
            roll.thread.join()
        self._abandoned = None
        return True
