"""Scaled dot-product attention and the multi-head attention module.

One attention function with a backend switch ("sdpa" = PyTorch's fused kernels, "math" = the
formula written out, which can return the attention weights), used by self-attention and
cross-attention, by encoders and decoders alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.models.cache import CacheView, KVCache, LayerView
from lmforge.models.layers import HookPoint
from lmforge.models.masks import AttentionMask
from lmforge.models.positions import apply_rope

Backend = Literal["sdpa", "math", "chunked"]
CHUNK = 256  # queries per block of the chunked backend


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: AttentionMask | Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: Backend = "sdpa",
    need_weights: bool = False,
    pattern_hook: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention(Q, K, V) = softmax(Q K^T * scale + mask) V, scale = 1/sqrt(d_k) by default.

    Args:
        q: (B, H, Tq, D) queries.
        k, v: (B, H_kv, Tk, D) keys and values; H must be a multiple of H_kv (grouped-query
            attention shares each key/value head among H / H_kv query heads).
        mask: an `AttentionMask` (positions, window, padding, bias), or an additive float mask
            broadcastable to (B, H, Tq, Tk) (0 = attend, a very negative number = do not), or None.
        causal: query i (at absolute position Tk - Tq + i) sees only keys j <= Tk - Tq + i.
            Combined with `mask` when both are given.
        scale: multiplier of Q K^T; None means 1/sqrt(D).
        dropout_p: dropout on the attention weights (training only).
        backend: "sdpa" (fused), "math" (explicit) or "chunked" (blocks of queries, each with
            its own slice of the mask, recomputed in backward: memory linear in the length);
            `need_weights` forces "math".
        need_weights: also return the (B, H, Tq, Tk) attention weights.
        pattern_hook: weights -> weights applied after the softmax (`lmforge.inspect`); forces
            the explicit path like `need_weights`.

    Returns:
        (output of shape (B, H, Tq, D), weights or None).
    """
    n_rep = q.size(1) // k.size(1)
    tq, tk = q.size(-2), k.size(-2)
    explicit = need_weights or pattern_hook is not None
    if isinstance(mask, AttentionMask):
        if backend == "chunked" and not explicit:
            return _chunked(q, k, v, mask, scale, dropout_p), None
        if mask.is_plain and backend == "sdpa" and not explicit:
            causal, mask = mask.causal, None  # contiguous positions: the kernel's own causal rule
        else:
            causal, mask = False, mask.dense(q.dtype)
    if causal and tq == 1:
        causal = False  # a single newest query sees every key
    if causal and (mask is not None or tq != tk or backend == "math" or explicit):
        # bottom-right aligned causal mask, folded into the additive mask
        causal_mask = causal_additive_mask(tq, tk, q.dtype, q.device)
        mask = causal_mask if mask is None else mask + causal_mask
        causal = False
    # a single query under torch.compile is written out below: the fused SDPA CPU kernel splits
    # it into (batch, head) tasks, while the formula lets the compiler fuse mask, scale and softmax
    fused = backend == "sdpa" and not explicit
    if fused and not (tq == 1 and torch.compiler.is_compiling()):
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask if mask is None or mask.dtype == q.dtype else mask.to(q.dtype),
            dropout_p=dropout_p,
            is_causal=causal,
            scale=scale,
            enable_gqa=n_rep > 1,
        )
        return out, None
    # the formula; the n_rep query heads sharing a key/value head are batched together:
    # (B, H_kv, n_rep * Tq, D) against (B, H_kv, Tk, D), no copies of the keys and values
    b, h, _, d = q.shape
    h_kv = k.size(1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qg = q.reshape(b, h_kv, n_rep * tq, d)
    scores = (qg @ k.transpose(-2, -1)).float() * scale  # (B, H_kv, n_rep * Tq, Tk)
    if mask is not None:
        m = mask.float()
        if m.dim() < 4:
            m = m.view((1,) * (4 - m.dim()) + tuple(m.shape))
        if m.size(1) == 1:
            m = m[:, :, None]  # (B|1, 1, 1, Tq|1, Tk)
        else:
            m = m.expand(m.size(0), h, tq, tk).reshape(m.size(0), h_kv, n_rep, tq, tk)
        scores = (scores.view(b, h_kv, n_rep, tq, tk) + m).view(b, h_kv, n_rep * tq, tk)
    weights = torch.softmax(scores, dim=-1).to(q.dtype)
    if pattern_hook is not None:  # the hook sees (B, H, Tq, Tk), one map per query head
        weights = pattern_hook(weights.view(b, h, tq, tk)).reshape(b, h_kv, n_rep * tq, tk)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = (weights @ v).view(b, h, tq, d)
    return out, (weights.view(b, h, tq, tk) if need_weights else None)


def _chunked(
    q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float | None, dropout_p: float
) -> Tensor:
    """Attention of CHUNK queries at a time against all keys, the mask built per block and the
    block recomputed in backward: peak memory O(CHUNK x T_k) instead of O(T_q x T_k)."""

    def block(qb: Tensor, q0: int, q1: int) -> Tensor:
        m = mask.block(qb.dtype, q0, q1)
        return F.scaled_dot_product_attention(
            qb,
            k,
            v,
            attn_mask=m,
            dropout_p=dropout_p,
            scale=scale,
            enable_gqa=q.size(1) != k.size(1),
        )

    outs = []
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    for q0 in range(0, q.size(-2), CHUNK):
        q1 = min(q0 + CHUNK, q.size(-2))
        qb = q[:, :, q0:q1]
        if grad:
            outs.append(checkpoint(block, qb, q0, q1, use_reentrant=False))
        else:
            outs.append(block(qb, q0, q1))
    return torch.cat(outs, dim=2)


def causal_additive_mask(tq: int, tk: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(Tq, Tk) mask: 0 where key j <= Tk - Tq + i, the dtype's minimum elsewhere."""
    q_pos = torch.arange(tk - tq, tk, device=device)[:, None]
    k_pos = torch.arange(tk, device=device)[None, :]
    return torch.zeros(tq, tk, dtype=dtype, device=device).masked_fill(
        k_pos > q_pos, torch.finfo(dtype).min
    )


class Attention(nn.Module):
    """Multi-head attention: head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V), out = Concat W^O.

    q, k, v and o are separate `nn.Linear`s (`q_proj`, `k_proj`, `v_proj`, `o_proj`) so that
    LoRA and quantization are module swaps and Hugging Face import is a rename. With `cross=True`
    the keys and values come from the encoder output (cross-attention).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, cross: bool = False) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.cross = cross
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        if not cross and not cfg.is_uniform:  # a structurally pruned block (lmforge.compress)
            self.n_head = cfg.layer_heads[layer_idx]
            self.n_kv_head = cfg.layer_kv_heads[layer_idx]
        self.scale = cfg.attn_scale
        self.dropout_p = cfg.attn_dropout
        self.q_proj = nn.Linear(cfg.d_model, self.n_head * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(self.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.backend: Backend = "sdpa"
        self.hook_pattern = HookPoint()  # the (B, H, Tq, Tk) weights, for lmforge.inspect

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, head_dim)

    def forward(
        self,
        x: Tensor,
        *,
        mask: AttentionMask | Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        rope_keys: tuple[Tensor, Tensor] | None = None,
        memory: Tensor | None = None,
        cache: KVCache | CacheView | LayerView | None = None,
        need_weights: bool = False,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, d_model); memory: (B, S, d_model) encoder output for cross-attention.

        rope: (cos, sin) for the new queries (and keys); rope_keys: (cos, sin) for every key
        after the cache update, when the cache stores keys before RoPE (attention sinks).

        prefix: (keys, values), each (B, H_kv, n, head_dim), put in front of this self-attention
        layer's keys and values (prefix tuning, `lmforge.peft`): every query attends to them, they
        carry no position (no RoPE, no bias) and they are never written into the KV cache.
        """
        q = self._heads(self.q_proj(x), self.n_head)  # (B, H, T, hd)
        if self.cross:
            kv = cache.cross_kv(self.layer_idx) if cache is not None else None
            if kv is None:
                k = self._heads(self.k_proj(memory), self.n_kv_head)  # (B, H_kv, S, hd)
                v = self._heads(self.v_proj(memory), self.n_kv_head)
                if cache is not None:
                    cache.set_cross_kv(self.layer_idx, k, v)
            else:
                k, v = kv
        else:
            k = self._heads(self.k_proj(x), self.n_kv_head)  # (B, H_kv, T, hd)
            v = self._heads(self.v_proj(x), self.n_kv_head)
            if rope is not None:
                q = apply_rope(q, *rope)
                if rope_keys is None:
                    k = apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, past + T, hd)
            if rope_keys is not None:
                k = apply_rope(k, *rope_keys)
            if prefix is not None:
                pk, pv = prefix
                k = torch.cat([pk.to(k.dtype), k], dim=2)  # (B, H_kv, n + past + T, hd)
                v = torch.cat([pv.to(v.dtype), v], dim=2)
                if isinstance(mask, AttentionMask):
                    mask = mask.with_prefix(pk.size(2))  # prefix columns are always visible
                elif mask is not None:  # the bottom-right causal alignment keeps them so too
                    mask = F.pad(mask, (pk.size(2), 0))
        # lmforge.inspect reads q, k, v at the projections and z at o_proj's input (module
        # hooks); the pattern goes through `hook_pattern`, which costs nothing unless hooked
        out, weights = attention(
            q,
            k,
            v,
            mask=mask,
            causal=causal,
            scale=self.scale,
            dropout_p=self.dropout_p if self.training else 0.0,
            backend=self.backend,
            need_weights=need_weights,
            pattern_hook=self.hook_pattern if self.hook_pattern.active else None,
        )
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)  # (B, T, H*hd)
        return self.o_proj(out), weights
