"""Norms and position-wise feed-forward networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ModelConfig


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g, computed in float32 and cast back before the
    gain (as Hugging Face's Llama does)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g  (no mean subtraction, no bias).

    float32 inputs take PyTorch's fused `F.rms_norm` (one operator instead of six: it matters
    per decoded token); other dtypes `rms_norm_reference`, in float32 as Hugging Face does."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return rms_norm_reference(x, self.weight, self.eps)


class HookPoint(nn.Module):
    """Identity that names an activation inside a block for `lmforge.inspect`: forward hooks on
    it read or replace the activation. Callers skip it unless a hook is registered (`active`)."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks)


def dropout(module: nn.Dropout, x: Tensor) -> Tensor:
    """module(x), skipped when it is the identity (eval mode or p = 0): saves the call and the
    dispatch per use while decoding."""
    return module(x) if module.training and module.p > 0 else x


def build_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm(x) = (x - mean) / sqrt(var + eps) * g + b, or RMSNorm, as the config says."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """FFN(x) = W_2 act(W_1 x)  or, with mlp="glu",  W_2 (act(W_1 x) * W_3 x).

    With activation="silu" the gated form is SwiGLU. Stored names: plain form
    `down_proj(act(up_proj(x)))`; gated form `down_proj(act(gate_proj(x)) * up_proj(x))`.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None) -> None:
        super().__init__()
        d_ff = cfg.d_ff if d_ff is None else d_ff  # a pruned block has its own width
        self.act = ACTIVATIONS[cfg.activation]
        self.gated = cfg.mlp == "glu"
        if self.gated:
            self.gate_proj = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias)
        self.down_proj = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h = self.act(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = self.act(self.up_proj(x))
        return self.down_proj(dropout(self.dropout, h))
