"""Transformer blocks and stacks of them (encoder stack, decoder stack).

A block, pre-norm (GPT-2, Llama, T5) or post-norm (BERT, the original Transformer)::

    pre-norm                                   post-norm
    x = x + Drop(SelfAttn(Norm_a(x)))          x = Norm_a(x + Drop(SelfAttn(x)))
    x = x + Drop(CrossAttn(Norm_c(x), mem))    x = Norm_c(x + Drop(CrossAttn(x, mem)))   (decoder of an encoder-decoder)
    x = x + Drop(FFN(Norm_m(x)))               x = Norm_m(x + Drop(FFN(x)))

The same block serves encoders (bidirectional), decoders (causal) and decoders with
cross-attention; the stack decides the mask and the positional signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.models.attention import Attention
from lmforge.models.cache import KVCache
from lmforge.models.layers import MLP, build_norm
from lmforge.models.positions import (
    RelativePositionBias,
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.attn_norm = build_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        if cross:
            self.cross_norm = build_norm(cfg)
            self.cross_attn = Attention(cfg, layer_idx, cross=True)
        self.mlp_norm = build_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, fn) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            out, w = fn(norm(x))
            return x + self.dropout(out), w
        out, w = fn(x)
        return norm(x + self.dropout(out)), w

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None,
        causal: bool,
        rope: tuple[Tensor, Tensor] | None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        x, weights = self._residual(
            x,
            self.attn_norm,
            lambda h: self.attn(
                h,
                mask=mask,
                causal=causal,
                rope=rope,
                cache=cache,
                need_weights=need_weights,
                prefix=prefix,
            ),
        )
        if memory is not None:
            x, _ = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(h, mask=memory_mask, memory=memory, cache=cache),
            )
        x, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h), None))
        return x, weights


@dataclass
class StackOutput:
    hidden: Tensor  # (B, T, d_model)
    attentions: list[Tensor] | None = None  # per layer (B, H, T, T_k) when asked for


def padding_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, Tk) 1 = token, 0 = padding  ->  (B, 1, 1, Tk) additive mask (0 or dtype min)."""
    keep = attention_mask[:, None, None, :].bool()
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


class Stack(nn.Module):
    """n blocks plus what they share: the mask, RoPE angles, ALiBi or relative position bias.

    Args:
        cfg: model config.
        n_layer: number of blocks.
        causal: decoder (each position sees only itself and the past) or encoder.
        cross: blocks also attend to an encoder output (decoder of an encoder-decoder).
    """

    def __init__(self, cfg: ModelConfig, n_layer: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.causal = causal
        self.layers = nn.ModuleList(Block(cfg, i, cross) for i in range(n_layer))
        self.norm = build_norm(cfg) if cfg.final_norm else None
        self.rope = RotaryEmbedding(cfg) if cfg.pos == "rope" else None
        self.rel_pos = (
            RelativePositionBias(cfg, bidirectional=not causal) if cfg.pos == "relative" else None
        )
        if cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gradient_checkpointing = False
        # prefix tuning (lmforge.peft): prefix(batch) -> one (keys, values) pair per block
        self.prefix: nn.Module | None = None

    def _mask(
        self, x: Tensor, attention_mask: Tensor | None, past: int
    ) -> tuple[Tensor | None, bool]:
        """The additive self-attention mask for T new queries over past + T keys.

        Returns (mask or None, causal flag left for the attention kernel).
        """
        t = x.size(1)
        total = past + t
        device, dtype = x.device, x.dtype
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = padding_mask(attention_mask[:, -total:], dtype)  # (B, 1, 1, Tk)
        q_pos = torch.arange(past, total, device=device)
        k_pos = torch.arange(total, device=device)
        bias = None
        if self.rel_pos is not None:
            bias = self.rel_pos(q_pos, k_pos).to(dtype)  # (1, H, Tq, Tk)
        elif self.cfg.pos == "alibi":
            bias = alibi_bias(self.alibi_slopes, q_pos, k_pos, self.causal).to(dtype)
        window = self.cfg.sliding_window
        if window is not None and total > window:
            too_far = (q_pos[:, None] - k_pos[None, :]) >= window  # (Tq, Tk)
            far = torch.zeros(too_far.shape, dtype=dtype, device=device)
            bias = far.masked_fill(too_far, torch.finfo(dtype).min) + (0 if bias is None else bias)
        if bias is not None:
            mask = bias if mask is None else mask + bias
        if mask is not None:
            mask = mask.clamp(min=torch.finfo(dtype).min)  # sums of two minima stay finite
        return mask, self.causal

    def forward(
        self,
        x: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> StackOutput:
        """x: (B, T, d_model) embedded input; attention_mask: (B, past + T) 1/0;
        memory: (B, S, d_model) encoder output with memory_mask (B, S)."""
        past = cache.length if cache is not None else 0
        mask, causal = self._mask(x, attention_mask, past)
        rope = None
        if self.rope is not None:
            if position_ids is None:
                position_ids = torch.arange(past, past + x.size(1), device=x.device)[None]
            rope = self.rope(position_ids, x.dtype)
        mem_mask = None
        if memory is not None and memory_mask is not None and not bool(memory_mask.all()):
            mem_mask = padding_mask(memory_mask, x.dtype)
        prefixes = self.prefix(x.size(0)) if self.prefix is not None else None
        x = self.dropout(x)
        attentions = [] if need_weights else None
        for i, block in enumerate(self.layers):
            kwargs = dict(
                prefix=None if prefixes is None else prefixes[i],
                mask=mask,
                causal=causal,
                rope=rope,
                memory=memory,
                memory_mask=mem_mask,
                cache=cache,
                need_weights=need_weights,
            )
            if self.gradient_checkpointing and self.training:
                x, w = checkpoint(block, x, use_reentrant=False, **kwargs)
            else:
                x, w = block(x, **kwargs)
            if attentions is not None:
                attentions.append(w)
        if cache is not None:
            cache.advance(x.size(1))
        if self.norm is not None:
            x = self.dropout(self.norm(x))
        return StackOutput(x, attentions)
