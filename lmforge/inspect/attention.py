"""Attention maps for any backend, and attention rollout.

The fused kernels (SDPA, chunked) never hold the attention weights. `attention_patterns` runs
the model's normal forward, catches what each requested attention layer receives (its input, mask,
RoPE angles, prefix) and recomputes

    A_h = softmax(q_h k_h^T * scale + mask_h)          (Tq, Tk) for head h

for the requested layers and heads only, so a 32-layer model asked for one head computes one
T x T matrix instead of all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.inspect.hooks import InspectError
from lmforge.models.masks import AttentionMask
from lmforge.models.positions import apply_rope


def _stack(model: nn.Module, stack: str) -> nn.Module:
    if stack not in ("encoder", "decoder") or not hasattr(model, stack):
        have = [s for s in ("encoder", "decoder") if hasattr(model, s)]
        raise InspectError(f"this model has no {stack} stack; use one of {have}.")
    return getattr(model, stack)


def default_stack(model: nn.Module) -> str:
    """ "encoder" for encoder-only models, else "decoder"."""
    return "encoder" if model.cfg.arch == "encoder" else "decoder"


def check_indices(what: str, chosen: Sequence[int] | None, n: int) -> list[int]:
    """`chosen` (None = all of range(n)) checked against n; negative indices count from the end."""
    if chosen is None:
        return list(range(n))
    out = []
    for i in chosen:
        if not -n <= i < n:
            raise InspectError(f"{what} {i} does not exist; this model has {n} (0..{n - 1}).")
        out.append(i % n)
    return out


def _pattern(attn: nn.Module, x: Tensor, kw: dict[str, Any], heads: list[int]) -> Tensor:
    """softmax(q k^T * scale + mask) of `heads` of one self-attention layer from its inputs."""
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, H, T, hd)
    k = attn.k_proj(x).view(b, t, attn.n_kv_head, attn.head_dim).transpose(1, 2)
    rope, rope_keys = kw.get("rope"), kw.get("rope_keys")
    if rope is not None:
        q = apply_rope(q, *rope)
        k = apply_rope(k, *(rope_keys if rope_keys is not None else rope))
    mask = kw.get("mask")
    prefix = kw.get("prefix")
    if prefix is not None:
        k = torch.cat([prefix[0].to(k.dtype), k], dim=2)  # (B, H_kv, n + T, hd)
        if isinstance(mask, AttentionMask):
            mask = mask.with_prefix(prefix[0].size(2))
    rep = attn.n_head // attn.n_kv_head
    idx = torch.tensor(heads, device=x.device)
    q = q[:, idx]  # (B, h, T, hd): the requested heads only
    k = k[:, idx // rep]  # the key head each query head reads (GQA/MQA)
    scale = attn.scale if attn.scale is not None else 1.0 / math.sqrt(attn.head_dim)
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, h, T, Tk)
    if isinstance(mask, AttentionMask):
        dense = mask.dense(torch.float32)  # (B|1, H|1, T, Tk)
        scores = scores + (dense[:, idx] if dense.size(1) > 1 else dense)
    elif mask is not None:
        scores = scores + mask.float()
    elif kw.get("causal"):
        scores = scores + torch.full((t, k.size(2)), float("-inf"), device=x.device).triu(
            k.size(2) - t + 1
        )
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def attention_patterns(
    model: nn.Module,
    input_ids: Tensor,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    stack: str | None = None,
    **forward_kwargs: Any,
) -> dict[int, Tensor]:
    """Self-attention weights of the requested layers and heads, whatever the attention backend.

    Args:
        model: a `Transformer`.
        input_ids: (B, T) ids (the source of an encoder-decoder when stack="encoder").
        layers, heads: which ones (None = all; negative indices count from the end).
        stack: "encoder" or "decoder" (default: the model's only stack, or the decoder).
        forward_kwargs: passed to the forward (attention_mask, decoder_input_ids, ...).

    Returns:
        layer -> (B, len(heads), T, T_k) float32 weights; each row sums to 1.
    """
    stack = stack or default_stack(model)
    blocks = _stack(model, stack).layers
    layers = check_indices("layer", layers, len(blocks))
    heads = check_indices("head", heads, model.cfg.n_head)
    found: dict[int, Tensor] = {}
    handles = []

    def catch(i: int):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            found[i] = _pattern(module, args[0], kwargs, heads)

        return pre

    try:
        for i in layers:
            handles.append(blocks[i].attn.register_forward_pre_hook(catch(i), with_kwargs=True))
        if stack == "encoder" and model.cfg.arch == "encoder-decoder":
            model.encode(input_ids, forward_kwargs.get("attention_mask"))
        else:
            model(input_ids, **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
    return found


def attention_rollout(patterns: Sequence[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout (Abnar and Zuidema, 2020): how much each output position draws on each
    input token through all layers, counting the residual connection.

        Â_l = residual * I + (1 - residual) * mean_h A_l,  rows renormalised to sum to 1
        R   = Â_L Â_{L-1} ... Â_1

    Args:
        patterns: per layer, bottom first, (B, H, T, T) weights (all heads of the layer).
        residual: weight of the identity (the skip connection); 0.5 as in the paper.

    Returns:
        (B, T, T): R[b, i, j] = share of output position i traced back to input token j.
    """
    if not patterns:
        raise InspectError("attention rollout needs the patterns of at least one layer.")
    rollout = None
    for a in patterns:
        if a.size(-1) != a.size(-2):
            raise InspectError("attention rollout needs square self-attention maps (no prefix).")
        eye = torch.eye(a.size(-1), dtype=a.dtype, device=a.device)
        step = residual * eye + (1.0 - residual) * a.mean(dim=1)  # (B, T, T)
        step = step / step.sum(dim=-1, keepdim=True)
        rollout = step if rollout is None else step @ rollout
    return rollout
