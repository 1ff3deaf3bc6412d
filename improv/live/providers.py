"""Which ONNX Runtime execution provider runs the model, and opening a session on it.

This module owns the choice between CUDA and CPU: ``--provider cpu`` never looks
for a GPU; ``auto`` looks only where a GPU is expected (an NVIDIA device node, or
CUDA_VISIBLE_DEVICES naming one) and then proves it by running one step, because
onnxruntime-gpu lists its CUDA provider even where none can start; ``cuda`` that
cannot run is an error that says so. One INFO line only when a GPU was expected
and the model still runs on CPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from improv.core.model_dir import ModelError

log = logging.getLogger("improv.live.engine")


def onnx_session(path: Path, provider: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # ORT raises several unrelated types for a bad file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path} cannot be loaded ({first}); re-export it (improv export)") from e


def gpu_expected() -> bool:
    """Whether this machine looks like it has an NVIDIA GPU for onnxruntime to use: its
    device node (Linux) or a CUDA_VISIBLE_DEVICES that names one. Without one, a CPU-only
    set is normal and says nothing about CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or bool(visible)


def _probe_cuda(path: Path, threads: int, shape: tuple[int, ...]) -> str | None:
    """None if a CUDA session really runs a step here, else why not."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider"
    # onnxruntime-gpu lists CUDA even without a GPU, then logs errors and falls back to
    # CPU silently; quiet its logger for the probe and look at what the session got.
    ort.set_default_logger_severity(4)
    try:
        sess = onnx_session(path, "cuda", threads)
        if sess.get_providers()[0] != "CUDAExecutionProvider":
            return "the CUDA provider is listed but did not start (no GPU, or CUDA/cuDNN missing)"
        cache = np.zeros(shape, np.float32)
        sess.run(None, {"tokens": np.zeros((1, 1), np.int64), "position": np.zeros(1, np.int64),
                        "past_keys": cache, "past_values": cache})
    except Exception as e:
        return f"a CUDA test step failed ({str(e).strip()[:120]})"
    finally:
        ort.set_default_logger_severity(2)
    return None


def pick_provider(provider: str, path: Path, threads: int, shape: tuple[int, ...]) -> str:
    """'cuda' where a CUDA session really runs here and is wanted, else 'cpu' (or, when
    cuda was asked for and cannot run, a ModelError that says so)."""
    if provider == "cpu":
        return "cpu"
    if provider == "auto" and not gpu_expected():
        return "cpu"  # the common case: no GPU here, nothing to say (and no probe to wait on)
    reason = _probe_cuda(path, threads, shape)
    if reason is None:
        return "cuda"
    if provider == "cuda":
        raise ModelError(f"provider cuda was asked for but {reason}; use --provider cpu")
    log.info("engine: a GPU is here but the model runs on CPU: %s", reason)
    return "cpu"
