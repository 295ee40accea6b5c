"""Tiny random models of every family for the interpretability tests."""

from __future__ import annotations

import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer

NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0}
CONFIGS = {
    "gpt-tiny": dict(),
    "llama-tiny": dict(),
    "bert-tiny": dict(),
    "t5-tiny": dict(),
    "alibi": dict(pos="alibi", n_head=6, head_dim=16),
    "sliding-window": dict(sliding_window=4),
}
PRESET = {"alibi": "gpt-tiny", "sliding-window": "llama-tiny"}


def build(name: str, seed: int = 0, **overrides) -> Transformer:
    """A random model of one family, biases and norm gains random too (no silent no-op)."""
    cfg = ModelConfig.from_preset(
        PRESET.get(name, name), **NO_DROPOUT, **CONFIGS[name], **overrides
    )
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(model: Transformer, length: int = 10, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.cfg.vocab_size, (batch, length), generator=gen)


def forward(model: Transformer, x: torch.Tensor, **kw):
    """Forward for any arch: an encoder-decoder reads x as source and target."""
    if model.cfg.arch == "encoder-decoder":
        return model(x, decoder_input_ids=x, **kw)
    return model(x, **kw)
