"""The compact transformer: configuration, network, KV-cached step, model directories.

A decoder-only transformer in the nanoGPT mould: token embedding tied with the
output head, pre-norm blocks (LayerNorm, causal self-attention with rotary
position embedding, GELU MLP), a final LayerNorm. No biases in the linear
layers: at this size they buy nothing and each one is another node in the
decode graph.

Two forward paths share every weight:

* :meth:`GPT.forward` — whole sequences, for training (scaled-dot-product
  attention, positions 0..T-1).
* :meth:`GPT.step` — the ONNX contract (see improv/export.py): T new tokens at
  absolute ``position`` against a cache ``[L, 1, H, C, D]`` whose slots
  ``>= position`` are masked in-graph. Scores against the past and against the
  new tokens are computed separately and only the small score tensors are
  concatenated, so a step never copies the cache. ``export.py`` traces this
  very method, so torch eager with a KV cache and ONNX Runtime run one
  definition.

A model directory holds ``model.safetensors``, ``config.json`` and
``vocab.json`` (written here), plus ``model.onnx`` / ``cache_update.onnx``
(written by ``export.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from improv.core import tokens
from improv.core.model_dir import FORMAT as FORMAT
from improv.core.model_dir import ModelError as ModelError


@dataclass
class ModelConfig:
    # The shipped model's width and depth, chosen by measured one-core ONNX Runtime step
    # latency (export.measure_step_latency, MODEL_CARD.md). It was trained with a
    # context of 512 (models/improv-base/config.json); 1024 is what training starts from.
    vocab_size: int = tokens.VOCAB_SIZE
    n_layer: int = 5
    n_head: int = 6
    d_model: int = 192
    d_ff: int = 768
    context: int = 1024
    rope_base: float = 10000.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ModelError(
                f"d_model {self.d_model} must split into {self.n_head} heads of even size; "
                "pick d_model a multiple of 2 * n_head"
            )
        if min(self.n_layer, self.n_head, self.d_ff, self.context, self.vocab_size) < 1:
            raise ModelError("n_layer, n_head, d_ff, context and vocab_size must all be >= 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# --- rotary position embedding -----------------------------------------------------------


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position, ``[context, head_dim]``, halves repeated (NeoX layout)."""
    half = cfg.head_dim // 2
    inv_freq = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(cfg.context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotation_matrix(head_dim: int) -> torch.Tensor:
    """R with ``x @ R == rotate_half(x)``: one MatMul node instead of slice/neg/concat."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim)
    idx = torch.arange(half)
    r[idx + half, idx] = -1.0
    r[idx, idx + half] = 1.0
    return r


# --- the network -------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.d_model = cfg.n_head, cfg.head_dim, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, self.d_model))

    def step(self, x, cos, sin, rot, blocked, past_k, past_v, scale: float):
        """Attention of T new tokens (batch 1) against a cache; see :meth:`GPT.step`."""
        T, H = x.shape[1], self.n_head
        qkv = self.qkv(x).view(1, T, 3 * H, self.head_dim)
        qk, v = qkv[:, :, : 2 * H], qkv[:, :, 2 * H :]
        qk = (qk * cos + (qk @ rot) * sin).transpose(1, 2)  # rotary on q and k at once
        q, k = qk[:, :H], qk[:, H:]
        v = v.transpose(1, 2)
        if scale != 1.0:  # the export folds the scale into the q weights instead
            q = q * scale
        scores = torch.cat([q @ past_k.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1)
        p = scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)
        C = past_k.shape[-2]
        y = p[..., :C] @ past_v + p[..., C:] @ v
        return self.proj(y.transpose(1, 2).reshape(1, T, self.d_model)), k, v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.out = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin):
        x = x + self.dropout(self.attn(self.ln1(x), cos, sin))
        return x + self.mlp(self.ln2(x))

    def step(self, x, cos, sin, rot, blocked, past_k, past_v, scale):
        y, k, v = self.attn.step(self.ln1(x), cos, sin, rot, blocked, past_k, past_v, scale)
        x = x + y
        return x + self.mlp(self.ln2(x)), k, v


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # also the output head
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rot", rotation_matrix(cfg.head_dim), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections down with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.out.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, T, V]`` for positions 0..T-1, and the loss (PAD targets ignored)."""
        T = idx.shape[1]
        if T > self.cfg.context:
            raise ModelError(
                f"sequence of {T} tokens is longer than the context {self.cfg.context}"
            )
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.drop(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=tokens.PAD,
            )
        return logits, loss

    def step(
        self,
        idx: torch.Tensor,
        position: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decode graph of the ONNX contract, in torch.

        ``idx`` [1, T] int64, ``position`` int64 [1], caches [L, 1, H, C, D].
        Token t sits at position + t, attends to past slots < position and to
        new tokens 0..t. Returns logits [1, T, V] and the new keys / values
        [L, 1, H, T, D] (rotary applied) for the caller to store at
        slots [position, position + T).
        """
        T = idx.shape[1]
        C = past_keys.shape[3]
        pos = position + torch.arange(T, device=idx.device)
        cos = self.rope_cos[pos].view(1, T, 1, -1)
        sin = self.rope_sin[pos].view(1, T, 1, -1)
        t = torch.arange(T, device=idx.device)
        past_blocked = (torch.arange(C, device=idx.device) >= position).expand(T, C)
        blocked = torch.cat([past_blocked, t[None, :] > t[:, None]], dim=1)  # [T, C + T]
        scale = self.cfg.head_dim**-0.5 if scale is None else scale
        x = self.wte(idx)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(
                x, cos, sin, self.rot, blocked, past_keys[i], past_values[i], scale
            )
            new_k.append(k)
            new_v.append(v)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return logits, torch.stack(new_k), torch.stack(new_v)

    @torch.no_grad()
    def forward_cached(
        self, idx: torch.Tensor, position: int, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eager KV-cached decode with the contract's semantics (see :meth:`step`)."""
        if position < 0 or position + idx.shape[1] > past_keys.shape[3]:
            raise ModelError(
                f"position {position} + {idx.shape[1]} tokens exceeds the cache of "
                f"{past_keys.shape[3]} slots; re-encode from position 0"
            )
        pos = torch.tensor([position], dtype=torch.long, device=idx.device)
        return self.step(idx, pos, past_keys, past_values)

    def empty_cache(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        shape = (c.n_layer, 1, c.n_head, c.context, c.head_dim)
        dev = self.wte.weight.device
        return torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(
            shape, dtype=dtype, device=dev
        )


# --- model directories -------------------------------------------------------------------


def default_styles() -> dict[str, int]:
    return {name: i for i, name in enumerate(tokens.CORPUS_STYLES)}


def save_model(
    gpt: GPT, model_dir: str | Path, styles: dict[str, int], card: str | None = None
) -> Path:
    """Write model.safetensors, config.json, vocab.json (and MODEL_CARD.md if given)."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, k in styles.items():
        tokens.style_token(k)  # raises on an index outside 0..15
        if not name:
            raise ModelError("style names must not be empty")
    weights = {k: v.detach().float().cpu().contiguous() for k, v in gpt.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": str(FORMAT)})
    config = {**gpt.cfg.to_dict(), "format": FORMAT}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    vocab = {
        "tokens": tokens.vocabulary(),
        "styles": dict(sorted(styles.items(), key=lambda x: x[1])),
    }
    (out / "vocab.json").write_text(json.dumps(vocab, indent=2) + "\n")
    if card is not None:
        (out / "MODEL_CARD.md").write_text(card)
    return out


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelError(
            f"{path} not found: is {model_dir} a model directory (improv train --out)?"
        )
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON ({e}); re-export or retrain the model") from e
    if d.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{path} has format {d.get('format')}, this improv reads {FORMAT}")
    return ModelConfig.from_dict(d)


def load_styles(model_dir: str | Path) -> dict[str, int]:
    path = Path(model_dir) / "vocab.json"
    if not path.is_file():
        return default_styles()
    return {str(k): int(v) for k, v in json.loads(path.read_text()).get("styles", {}).items()}


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The GPT in a model directory (config.json + model.safetensors), in eval mode."""
    cfg = load_config(model_dir)
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{path} not found: the model directory has no weights")
    gpt = GPT(cfg)
    state = load_file(str(path), device=str(device))
    missing, unexpected = gpt.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{path} does not match config.json (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the files come from different models"
        )
    return gpt.to(device).eval()
