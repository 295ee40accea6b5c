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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.errors import GenerationError
from lmforge.models.attention import Attention
from lmforge.models.cache import CacheView, KVCache, LayerView
from lmforge.models.layers import MLP, HookPoint, build_norm, dropout
from lmforge.models.masks import AttentionMask
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
        self.mlp = MLP(cfg, None if cross or cfg.is_uniform else cfg.layer_ffn[layer_idx])
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_resid_mid = HookPoint()  # the stream between attention and MLP (lmforge.inspect)

    def _residual(self, x: Tensor, norm: nn.Module, fn) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            out, w = fn(norm(x))
            return x + dropout(self.dropout, out), w
        out, w = fn(x)
        return norm(x + dropout(self.dropout, out)), w

    def forward(
        self,
        x: Tensor,
        *,
        mask: AttentionMask | Tensor | None,
        rope: tuple[Tensor, Tensor] | None,
        rope_keys: tuple[Tensor, Tensor] | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | CacheView | LayerView | None = None,
        need_weights: bool = False,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        # lmforge.inspect: resid_pre / resid_post are this block's input / output (module hooks),
        # resid_mid is `hook_resid_mid` below
        x, weights = self._residual(
            x,
            self.attn_norm,
            lambda h: self.attn(
                h,
                mask=mask,
                rope=rope,
                rope_keys=rope_keys,
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
        if self.hook_resid_mid.active:
            x = self.hook_resid_mid(x)
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

    def _bias_fn(self):
        if self.rel_pos is not None:
            return self.rel_pos  # (q_pos, k_pos) -> (1, H, tq, tk)
        if self.cfg.pos == "alibi":
            return lambda q, k: alibi_bias(self.alibi_slopes, q, k, self.causal)
        return None

    def _mask(
        self, x: Tensor, attention_mask: Tensor | None, cache: KVCache | None
    ) -> AttentionMask:
        """Which of the keys (cached + new) each of the T new queries sees, as positions."""
        t = x.size(1)
        device = x.device
        padded = attention_mask is not None and not bool(attention_mask.all())
        window = self.cfg.sliding_window
        if cache is not None and cache.rolling:
            if padded:
                raise GenerationError(
                    "a rolling KV cache does not take padded batches; give prompts of one length "
                    "or run them one at a time."
                )
            k_pos = cache.key_positions(t)
            window = cache.window if window is None else min(window, cache.window)
            return AttentionMask(
                k_pos[-t:],
                k_pos,
                self.causal,
                window=window,
                sinks=cache.sink_flags(t),
                bias_fn=self._bias_fn(),
            )
        past = cache.length if cache is not None else 0
        total = past + t
        return AttentionMask(
            torch.arange(past, total, device=device),
            torch.arange(total, device=device),
            self.causal,
            window=window if window is not None and total > window else None,
            key_keep=attention_mask[:, -total:].bool() if padded else None,
            bias_fn=self._bias_fn(),
        )

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
        mask = self._mask(x, attention_mask, cache)
        rope = rope_keys = None
        if self.rope is not None:
            if cache is not None and cache.reposition:
                # attention sinks: rotate by slot in the cache, keys re-rotated every step
                slots = mask.k_pos[None]
                rope, rope_keys = (
                    self.rope(slots[:, -x.size(1) :], x.dtype),
                    self.rope(slots, x.dtype),
                )
            else:
                if position_ids is None:
                    past = cache.seen if cache is not None else 0
                    position_ids = torch.arange(past, past + x.size(1), device=x.device)[None]
                rope = self.rope(position_ids, x.dtype)
        mem_mask = None
        if memory is not None and memory_mask is not None and not bool(memory_mask.all()):
            mem_mask = padding_mask(memory_mask, x.dtype)
        prefixes = self.prefix(x.size(0)) if self.prefix is not None else None
        x = dropout(self.dropout, x)
        attentions = [] if need_weights else None
        for i, block in enumerate(self.layers):
            kwargs = dict(
                prefix=None if prefixes is None else prefixes[i],
                mask=mask,
                rope=rope,
                rope_keys=rope_keys,
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
            t = x.size(1)
            cache.advance(t, None if attention_mask is None else attention_mask[:, -t:])
        if self.norm is not None:
            x = dropout(self.dropout, self.norm(x))
        return StackOutput(x, attentions)

    def step(
        self,
        x: Tensor,
        view: CacheView,
        *,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        block_call: BlockCall | None = None,
    ) -> Tensor:
        """One decode step: x (B, 1, d_model), the embedded newest token of every row, through
        the same blocks as `forward`, against the cache `view` (see `CacheView`). Everything the
        step reads is a tensor: the mask comes from the keep-vector and the slot, positions from
        `view.pos`; there are no host syncs (except the largest position that "dynamic" RoPE
        scaling reads), so torch.compile(fullgraph=True) captures the step as one graph.

        block_call: runs consecutive blocks (`call_blocks`' signature), up to its `span`
        attribute at a time (without one: the whole stack in one call), e.g. a compiled
        `call_blocks` shared by every run (regional compilation); each block gets its own
        `LayerView`.
        Returns the (B, 1, d_model) final hidden state."""
        mask = view.step_mask(self.cfg.sliding_window, self._bias_fn(), x.dtype)
        rope = None
        if self.rope is not None:  # (B, 1, 1, head_dim): broadcast over the heads once per step
            rope = tuple(t[:, None] for t in self.rope(view.pos, x.dtype))
        mem_mask = None if memory_mask is None else padding_mask(memory_mask, x.dtype)
        prefixes = self.prefix(x.size(0)) if self.prefix is not None else None
        call = block_call or call_blocks
        n = len(self.layers)
        span = getattr(call, "span", n)
        for s in range(0, n, span):
            run = range(s, min(s + span, n))
            x = call(
                tuple(self.layers[i] for i in run),
                x,
                mask,
                rope,
                tuple(view.layer(i) for i in run),
                memory,
                mem_mask,
                None if prefixes is None else tuple(prefixes[i] for i in run),
            )
        if self.norm is not None:
            x = self.norm(x)
        return x


BlockCall = Callable[..., Tensor]


def call_blocks(
    blocks: tuple[Block, ...],
    x: Tensor,
    mask: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    caches: tuple[LayerView, ...],
    memory: Tensor | None = None,
    memory_mask: Tensor | None = None,
    prefixes: tuple | None = None,
) -> Tensor:
    """A run of consecutive blocks of a decode step, `call_block` on each with its own
    `LayerView`: a compiled copy of this function serves every run of the same length and
    shapes (regional compilation with fewer, larger regions)."""
    for i, block in enumerate(blocks):
        prefix = None if prefixes is None else prefixes[i]
        x = call_block(block, x, mask, rope, caches[i], memory, memory_mask, prefix)
    return x


def call_block(
    block: Block,
    x: Tensor,
    mask: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    cache: LayerView,
    memory: Tensor | None = None,
    memory_mask: Tensor | None = None,
    prefix: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One block of a decode step: (B, 1, d_model) -> (B, 1, d_model), against the layer's
    own `LayerView` (no layer index is read, so a compiled copy of this function serves every
    block of the same shape)."""
    x, _ = block(
        x,
        mask=mask,
        rope=rope,
        memory=memory,
        memory_mask=memory_mask,
        cache=cache,
        prefix=prefix,
    )
    return x
