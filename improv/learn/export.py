"""ONNX export of a model directory: the decode graph with KV cache, and the cache update.

Writes ``model.onnx`` and ``cache_update.onnx`` beside the weights, per the
contract below, and offers the two checks the rest of the project leans on:
:func:`run_onnx_decode` (token-by-token decode through ONNX Runtime, for
tests) and :func:`measure_step_latency` (one-core step latency at full context,
which chose the shipped model size).

The decode graph is written node by node rather than traced. Tracing
``past_keys[i]`` gives a Gather (ORT turns it into a Split) that copies the
whole cache every step; a ``Scan`` over the layers hands each iteration a view
of its layer's cache and weights instead, and writes each layer's new keys
straight into the stacked output. Measured on one core at full context this
was the difference between missing and meeting the latency budget. The graph
computes exactly :meth:`improv.learn.model.GPT.step`; tests/test_export.py holds the
two to 1e-4.

The contract (what ``improv.live.engine`` relies on; L layers, H heads, C context, D
head width, V vocabulary), one graph for one-token steps and for prefill:

* inputs: ``tokens`` int64 [1, T]; ``position`` int64 [1], the cache slot of
  ``tokens[0, 0]``; ``past_keys`` and ``past_values`` float32 [L, 1, H, C, D];
* outputs: ``logits`` float32 [1, T, V]; ``new_keys`` and ``new_values``
  float32 [L, 1, H, T, D], the new tokens' keys (rotary applied) and values;
* token t sits at position ``position + t``, attends to past slots below
  ``position`` and to new tokens up to itself; slots at or past ``position``
  are ignored whatever they hold, so the host writes the new keys into slots
  ``[position, position + T)`` and may rewind by moving ``position`` back;
* nothing O(C) is copied per step beyond reading the cache;
* ``cache_update.onnx`` (for a cache kept on a GPU): ``past`` [L,1,H,C,D],
  ``new`` [L,1,H,T,D], ``position`` -> ``present``, past with those slots replaced.

A model folder holds ``model.onnx``, ``cache_update.onnx``, ``config.json`` (the
ModelConfig fields and ``format``), ``vocab.json`` (token names by id and
``styles``: style name -> STYLE index) and ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from improv.core.cli_help import with_examples
from improv.learn.model import GPT, ModelError, load_model

OPSET = 17
FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


class _Graph:
    """A list of nodes with generated output names: keeps the builder below readable."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.inits, self.n = prefix, [], [], 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | list[str] = "", **attrs):
        """Append a node; its outputs get ``name`` (a str, or a list for several) or fresh names."""
        self.n += 1
        outs = [name] if isinstance(name, str) else list(name)
        if not name:
            outs = [f"{self.prefix}{op_type}_{self.n}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), self.prefix + name))
        return self.prefix + name


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _layer_body(gpt: GPT, outer: dict[str, str]) -> onnx.GraphProto:
    """One transformer block for one Scan iteration (batch 1, T new tokens)."""
    c = gpt.cfg
    H, D, d = c.n_head, c.head_dim, c.d_model
    g = _Graph("b_")
    x = "x_in"
    # Pre-norm attention. The 1/sqrt(D) score scale is folded into the q weights.
    h = g.op("LayerNormalization", x, "ln1_w", "ln1_b", axis=-1, epsilon=1e-5)
    qkv = g.op("MatMul", h, "w_qkv")
    qkv = g.op("Reshape", qkv, g.const("shape_qkv", np.array([1, -1, 3 * H, D], np.int64)))
    qk, v = g.op(
        "Split", qkv, g.const("split_qkv", np.array([2 * H, H], np.int64)), axis=2, outputs=2
    )
    # Rotary embedding on q and k together: x * cos + rotate_half(x) * sin.
    qk_rot = g.op("MatMul", qk, outer["rot"])
    qk = g.op("Add", g.op("Mul", qk, outer["cos"]), g.op("Mul", qk_rot, outer["sin"]))
    qk = g.op("Transpose", qk, perm=[0, 2, 1, 3])  # [1, 2H, T, D]
    q, k = g.op(
        "Split", qk, g.const("split_qk", np.array([H, H], np.int64)), axis=1, name=["q", "k_out"]
    )
    v = g.op("Transpose", v, perm=[0, 2, 1, 3], name="v_out")  # [1, H, T, D]
    # Scores against the past and against the new tokens, separately: no cache copy.
    s_past = g.op("MatMul", q, g.op("Transpose", "past_k", perm=[0, 1, 3, 2]))
    s_new = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    s = g.op("Concat", s_past, s_new, axis=-1)
    s = g.op("Where", outer["blocked"], g.const("neg_inf", np.array(-np.inf, np.float32)), s)
    p = g.op("Softmax", s, axis=-1)
    p_past, p_new = g.op("Split", p, outer["split_ct"], axis=-1, outputs=2)
    y = g.op("Add", g.op("MatMul", p_past, "past_v"), g.op("MatMul", p_new, v))
    y = g.op(
        "Reshape",
        g.op("Transpose", y, perm=[0, 2, 1, 3]),
        g.const("shape_y", np.array([1, -1, d], np.int64)),
    )
    x = g.op("Add", x, g.op("MatMul", y, "w_o"))
    # Pre-norm MLP with exact GELU, written the way ORT's Gelu fusion recognises.
    f = g.op(
        "MatMul", g.op("LayerNormalization", x, "ln2_w", "ln2_b", axis=-1, epsilon=1e-5), "w_fc"
    )
    erf = g.op("Erf", g.op("Div", f, g.const("sqrt2", np.array(np.sqrt(2.0), np.float32))))
    f = g.op(
        "Mul",
        g.op("Mul", f, g.op("Add", erf, g.const("one", np.array(1.0, np.float32)))),
        g.const("half", np.array(0.5, np.float32)),
    )
    g.op("Add", x, g.op("MatMul", f, "w_out"), name="x_out")

    def vi(name, dims):
        return helper.make_tensor_value_info(name, FLOAT, dims)

    inputs = [
        vi("x_in", [1, "T", d]),
        vi("past_k", [1, H, c.context, D]),
        vi("past_v", [1, H, c.context, D]),
    ]
    inputs += [vi(n, list(s)) for n, s in _layer_weight_shapes(gpt).items()]
    outputs = [vi("x_out", [1, "T", d]), vi("k_out", [1, H, "T", D]), vi("v_out", [1, H, "T", D])]
    return helper.make_graph(g.nodes, "block", inputs, outputs, initializer=g.inits)


def _layer_weights(gpt: GPT) -> dict[str, np.ndarray]:
    """Per-layer weights stacked on a leading L axis, laid out for x @ W."""
    scale = gpt.cfg.head_dim**-0.5
    d = gpt.cfg.d_model
    w: dict[str, list[np.ndarray]] = {n: [] for n in _LAYER_WEIGHTS}
    for b in gpt.blocks:
        qkv = _np(b.attn.qkv.weight).T.copy()
        qkv[:, :d] *= scale
        w["ln1_w"].append(_np(b.ln1.weight))
        w["ln1_b"].append(_np(b.ln1.bias))
        w["w_qkv"].append(qkv)
        w["w_o"].append(_np(b.attn.proj.weight).T)
        w["ln2_w"].append(_np(b.ln2.weight))
        w["ln2_b"].append(_np(b.ln2.bias))
        w["w_fc"].append(_np(b.mlp.fc.weight).T)
        w["w_out"].append(_np(b.mlp.out.weight).T)
    return {n: np.stack(v).astype(np.float32) for n, v in w.items()}


_LAYER_WEIGHTS = ("ln1_w", "ln1_b", "w_qkv", "w_o", "ln2_w", "ln2_b", "w_fc", "w_out")


def _layer_weight_shapes(gpt: GPT) -> dict[str, tuple[int, ...]]:
    c = gpt.cfg
    d, f = c.d_model, c.d_ff
    shapes = {
        "ln1_w": (d,),
        "ln1_b": (d,),
        "w_qkv": (d, 3 * d),
        "w_o": (d, d),
        "ln2_w": (d,),
        "ln2_b": (d,),
        "w_fc": (d, f),
        "w_out": (f, d),
    }
    return {n: shapes[n] for n in _LAYER_WEIGHTS}


def decode_graph(gpt: GPT) -> onnx.ModelProto:
    """The model.onnx of the contract for ``gpt``."""
    c = gpt.cfg
    L, H, C, D, V = c.n_layer, c.n_head, c.context, c.head_dim, c.vocab_size
    g = _Graph("")
    # Positions, rotary tables and the attention mask, once for all layers.
    t_len = g.op("Shape", "tokens", start=1, end=2)  # [1]
    t = g.op(
        "Range",
        g.const("zero", np.array(0, np.int64)),
        g.op("Squeeze", t_len, g.const("axis0", np.array([0], np.int64))),
        g.const("one_i", np.array(1, np.int64)),
    )
    pos = g.op("Add", t, "position")
    cos_t, sin_t = (_np(b)[:C] for b in (gpt.rope_cos, gpt.rope_sin))
    axis1 = g.const("axis1", np.array([1], np.int64))
    outer = {
        "cos": g.op("Unsqueeze", g.op("Gather", g.const("rope_cos", cos_t), pos), axis1),
        "sin": g.op("Unsqueeze", g.op("Gather", g.const("rope_sin", sin_t), pos), axis1),
        "rot": g.const("rot", _np(gpt.rot)),
    }
    c_len = g.const("c_len", np.array([C], np.int64))
    past_blocked = g.op(
        "GreaterOrEqual", g.const("slots", np.arange(C, dtype=np.int64)), "position"
    )
    past_blocked = g.op("Expand", past_blocked, g.op("Concat", t_len, c_len, axis=0))
    new_blocked = g.op(
        "Greater",
        g.op("Unsqueeze", t, g.const("axis0b", np.array([0], np.int64))),
        g.op("Unsqueeze", t, axis1),
    )
    outer["blocked"] = g.op("Concat", past_blocked, new_blocked, axis=1)  # [T, C + T]
    outer["split_ct"] = g.op("Concat", c_len, t_len, axis=0)

    x = g.op("Gather", g.const("wte", _np(gpt.wte.weight)), "tokens")  # [1, T, d]
    weights = _layer_weights(gpt)
    for n, w in weights.items():
        g.const("layer_" + n, w)
    x, _, _ = g.op(
        "Scan",
        x,
        "past_keys",
        "past_values",
        *("layer_" + n for n in weights),
        name=["x_final", "new_keys", "new_values"],
        body=_layer_body(gpt, outer),
        num_scan_inputs=2 + len(weights),
    )
    h = g.op(
        "LayerNormalization",
        x,
        g.const("ln_f_w", _np(gpt.ln_f.weight)),
        g.const("ln_f_b", _np(gpt.ln_f.bias)),
        axis=-1,
        epsilon=1e-5,
    )
    g.op("MatMul", h, g.const("head", _np(gpt.wte.weight).T), name="logits")

    cache = [L, 1, H, C, D]
    inputs = [
        helper.make_tensor_value_info("tokens", INT64, [1, "T"]),
        helper.make_tensor_value_info("position", INT64, [1]),
        helper.make_tensor_value_info("past_keys", FLOAT, cache),
        helper.make_tensor_value_info("past_values", FLOAT, cache),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", FLOAT, [1, "T", V]),
        helper.make_tensor_value_info("new_keys", FLOAT, [L, 1, H, "T", D]),
        helper.make_tensor_value_info("new_values", FLOAT, [L, 1, H, "T", D]),
    ]
    graph = helper.make_graph(g.nodes, "improv_decode", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="improv"
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    return model


def cache_update_graph(gpt: GPT) -> onnx.ModelProto:
    """cache_update.onnx: present = past with slots [position, position + T) set to new."""
    c = gpt.cfg
    cache = [c.n_layer, 1, c.n_head, c.context, c.head_dim]
    g = _Graph("")
    new_shape = g.op("Shape", "new")
    t_len = g.op(
        "Squeeze",
        g.op(
            "Slice",
            new_shape,
            g.const("i3", np.array([3], np.int64)),
            g.const("i4", np.array([4], np.int64)),
        ),
        g.const("axis0", np.array([0], np.int64)),
    )
    slots = g.op(
        "Add",
        g.op(
            "Range",
            g.const("zero", np.array(0, np.int64)),
            t_len,
            g.const("one", np.array(1, np.int64)),
        ),
        "position",
    )
    slots = g.op("Reshape", slots, g.const("shape", np.array([1, 1, 1, -1, 1], np.int64)))
    idx = g.op("Expand", slots, new_shape)
    g.op("ScatterElements", "past", idx, "new", axis=3, name="present")
    inputs = [
        helper.make_tensor_value_info("past", FLOAT, cache),
        helper.make_tensor_value_info("new", FLOAT, cache[:3] + ["T", cache[4]]),
        helper.make_tensor_value_info("position", INT64, [1]),
    ]
    outputs = [helper.make_tensor_value_info("present", FLOAT, cache)]
    graph = helper.make_graph(g.nodes, "improv_cache_update", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="improv"
    )
    model.ir_version = 8
    return model


def export_model(model_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write model.onnx and cache_update.onnx for the model in ``model_dir``; returns the folder."""
    gpt = load_model(model_dir)
    out = Path(out_dir) if out_dir is not None else Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    if out != Path(model_dir):
        for name in ("config.json", "vocab.json"):
            if (Path(model_dir) / name).is_file():
                (out / name).write_text((Path(model_dir) / name).read_text())
    for name, model in (
        ("model.onnx", decode_graph(gpt)),
        ("cache_update.onnx", cache_update_graph(gpt)),
    ):
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(out / name))
    return out


# --- running the exported graph ----------------------------------------------------------


def ort_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _cache_shape(sess) -> tuple[int, ...]:
    shape = next(i.shape for i in sess.get_inputs() if i.name == "past_keys")
    return tuple(int(s) for s in shape)


def run_onnx_decode(
    model_dir: str | Path, tokens: list[int] | np.ndarray, prefill: int = 0
) -> np.ndarray:
    """Logits [N, V] for ``tokens`` via model.onnx: ``prefill`` at once, then one per step."""
    sess = ort_session(Path(model_dir) / "model.onnx")
    shape = _cache_shape(sess)
    toks = np.asarray(tokens, dtype=np.int64)
    if len(toks) > shape[3]:
        raise ModelError(f"{len(toks)} tokens do not fit the context of {shape[3]}")
    keys, values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    out, pos = [], 0
    chunks = ([toks[:prefill]] if prefill else []) + [
        toks[i : i + 1] for i in range(prefill, len(toks))
    ]
    for chunk in chunks:
        logits, nk, nv = sess.run(
            None,
            {
                "tokens": chunk[None, :],
                "position": np.array([pos], np.int64),
                "past_keys": keys,
                "past_values": values,
            },
        )
        keys[:, :, :, pos : pos + len(chunk)] = nk
        values[:, :, :, pos : pos + len(chunk)] = nv
        out.append(logits[0])
        pos += len(chunk)
    return np.concatenate(out, axis=0)


def measure_step_latency(
    model_dir: str | Path, steps: int = 2000, position: int | None = None, threads: int = 1
) -> dict[str, float]:
    """One-token step latency (ms) through ORT at ``position`` (default: the last slot)."""
    sess = ort_session(Path(model_dir) / "model.onnx", threads)
    shape = _cache_shape(sess)
    rng = np.random.default_rng(0)
    feed = {
        "tokens": np.array([[5]], np.int64),
        "position": np.array([shape[3] - 1 if position is None else position], np.int64),
        "past_keys": rng.standard_normal(shape, dtype=np.float32),
        "past_values": rng.standard_normal(shape, dtype=np.float32),
    }
    for _ in range(min(200, steps)):
        sess.run(None, feed)
    times = np.empty(steps)
    for i in range(steps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "steps": steps,
    }


# --- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Export a trained model to ONNX.",
        **with_examples(
            "improv export --model models/mine"))
    ap.add_argument(
        "--model", required=True, help="model directory (config.json, model.safetensors)"
    )
    ap.add_argument("--out", help="write the ONNX files here instead of into --model")
    ap.add_argument(
        "--measure",
        action="store_true",
        help="then time one-token steps at full context on one core",
    )
    ap.add_argument("--steps", type=int, default=2000, help="steps to time with --measure")
    args = ap.parse_args(argv)
    try:
        out = export_model(args.model, args.out)
        print(f"wrote {out / 'model.onnx'} and {out / 'cache_update.onnx'}")
        if args.measure:
            m = measure_step_latency(out, args.steps)
            print(
                f"step latency at full context, 1 thread: median {m['median_ms']:.3f} ms, "
                f"p90 {m['p90_ms']:.3f} ms, p99 {m['p99_ms']:.3f} ms ({m['steps']} steps)"
            )
    except ModelError as e:
        print(f"{prog or 'improv export'}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
