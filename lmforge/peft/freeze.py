"""Freezing and partial fine-tuning: train the top N blocks and the head, count what trains.

    requires_grad = True  for  top_stack.layers[-n:], top_stack.norm, heads;  False elsewhere

The top stack is the decoder when the model has one (decoder-only, encoder-decoder), else the
encoder.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from torch import nn

from lmforge.errors import AdapterError
from lmforge.models.transformer import Transformer


def _unique(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def count_trainable(model: nn.Module) -> int:
    """Parameters with requires_grad (each shared tensor counted once)."""
    return sum(p.numel() for p in _unique(model) if p.requires_grad)


def count_parameters(model: nn.Module) -> int:
    """All parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in _unique(model))


def human(n: int) -> str:
    """1234567 -> '1.2M', 45600 -> '45.6K', 512 -> '512'."""
    for value, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= value:
            return f"{n / value:.1f}{suffix}"
    return str(n)


def trainable_report(model: nn.Module) -> str:
    """'trainable 1.2M of 22.7M parameters (5.3%)' and one line per group of trainable modules.

    Groups collapse layer indices: `decoder.layers.*.attn.q_proj  x4  lora_A, lora_B  8,192`.
    """
    total, trainable = count_parameters(model), count_trainable(model)
    pct = 100.0 * trainable / max(total, 1)
    lines = [f"trainable {human(trainable)} of {human(total)} parameters ({pct:.2f}%)"]
    groups: OrderedDict[str, dict] = OrderedDict()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner, _, leaf = name.rpartition(".")
        key = re.sub(r"\.\d+(?=\.|$)", ".*", owner) or "(model)"
        g = groups.setdefault(key, {"modules": set(), "leaves": [], "count": 0})
        g["modules"].add(owner)
        if leaf not in g["leaves"]:
            g["leaves"].append(leaf)
        g["count"] += p.numel()
    width = max((len(k) for k in groups), default=0)
    for key, g in groups.items():
        times = f"x{len(g['modules'])}"
        lines.append(
            f"  {key:<{width}}  {times:>4}  {', '.join(g['leaves']):<24} {g['count']:>12,}"
        )
    return "\n".join(lines)


def freeze_all_but_last(model: nn.Module, n: int, train_tied: bool = False) -> nn.Module:
    """Last-N-layer fine-tuning: train the top n blocks of the top stack, its final norm and the
    heads; freeze everything else (embeddings and lower blocks), in place.

    Args:
        model: an lmforge `Transformer`.
        n: blocks to train, 0..number of blocks of the top stack (0 = final norm and heads only).
        train_tied: a tied head's matrix *is* the input embedding; by default it stays frozen
            (training it would change the input side too). Set True to train it anyway.

    Returns:
        the same model.
    """
    if not isinstance(model, Transformer):
        raise AdapterError(
            f"freeze_all_but_last needs an lmforge Transformer, got {type(model).__name__}."
        )
    stack = model.decoder if hasattr(model, "decoder") else model.encoder
    depth = len(stack.layers)
    if not 0 <= n <= depth:
        raise AdapterError(
            f"n must be between 0 and {depth} (the blocks of the top stack), got {n}."
        )
    embedding = {id(p) for p in model.embed.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    parts = [*stack.layers[depth - n :], stack.norm, model.heads]
    for part in parts:
        if part is None:
            continue
        for p in part.parameters():
            if train_tied or id(p) not in embedding:
                p.requires_grad_(True)
    return model
