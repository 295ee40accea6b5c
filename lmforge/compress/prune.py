"""Unstructured magnitude pruning: zero the smallest weights, keep them zero while fine-tuning.

Magnitude pruning to sparsity s (Han et al. 2015; torch.nn.utils.prune's `l1_unstructured`):

    per layer:  for each weight W, M = 1[|W| > t_W], t_W the k-th smallest |W|, k = round(s |W|)
    global:     one threshold t over all pruned weights together, k = round(s sum_W |W|)
    W' = W * M

Only the linear layers of the Transformer blocks are pruned (attention q/k/v/o and the MLP), the
usual choice: embeddings, norms and output heads stay dense.

The masks survive fine-tuning: `attach_masks` registers a forward pre-hook that re-applies
W <- W * M before every forward (so after every optimizer step, before the weights are used
again) and a state-dict pre-hook, so any checkpoint written while the masks are attached holds
the masked weights: the masks are folded in on save. `remove_masks` folds them in for good and
detaches the hooks. The stored names never change (no `weight_orig`), so a pruned model is a
normal model dir.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError

Scope = Literal["layer", "global"]
MASK_ATTR = "_lmforge_prune"  # where a masked linear keeps (mask, hook handles)


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers inside the Transformer blocks, by qualified name (attention q/k/v/o,
    MLP up/gate/down); embeddings and heads are left out."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in f".{name}" and "lora_" not in name
    }


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}; 0.5 removes half.")


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the same shape, True = kept: all but the k smallest entries (exactly k
    removed, ties broken by position)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:k]] = False
    return keep.view_as(scores)


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: Scope = "layer") -> dict[str, Tensor]:
    """M = 1[|W| > t] per pruned linear, t chosen so that a fraction `sparsity` of the weights
    is removed per layer (`scope="layer"`) or over all pruned layers together ("global").

    Args:
        model: a Transformer (or any module with `.layers.` linears).
        sparsity: fraction of the weights to remove, in [0, 1).
        scope: "layer" (each layer to the same sparsity) or "global" (one threshold).

    Returns:
        {linear name: bool mask shaped like its weight, True = kept}.
    """
    _check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got '{scope}'.")
    linears = prunable_linears(model)
    if not linears:
        raise ConfigError("the model has no linear layers inside Transformer blocks to prune.")
    if scope == "layer":
        return {
            name: _smallest(m.weight.abs(), round(sparsity * m.weight.numel()))
            for name, m in linears.items()
        }
    flat = torch.cat([m.weight.abs().flatten().float() for m in linears.values()])
    keep = _smallest(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for name, m in linears.items():
        n = m.weight.numel()
        out[name] = keep[start : start + n].view_as(m.weight)
        start += n
    return out


def _apply_hook(module: nn.Module, *_args) -> None:
    mask = getattr(module, MASK_ATTR)[0]
    with torch.no_grad():
        module.weight.mul_(mask.to(module.weight.dtype))


def attach_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero the masked weights now and keep them zero: W <- W * M before every forward and
    before every `state_dict()` (checkpoints hold the masked weights). Replaces earlier masks."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear) or module.weight.shape != mask.shape:
            raise ConfigError(f"no linear layer '{name}' with a weight shaped like its mask.")
        _detach(module)
        handles = (
            module.register_forward_pre_hook(_apply_hook),
            module.register_state_dict_pre_hook(lambda m, *a: _apply_hook(m)),
        )
        setattr(module, MASK_ATTR, (mask.to(module.weight.device), handles))
        _apply_hook(module)


def _detach(module: nn.Module) -> None:
    entry = getattr(module, MASK_ATTR, None)
    if entry is not None:
        for handle in entry[1]:
            handle.remove()
        delattr(module, MASK_ATTR)


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks attached to `model`, by linear name (empty when it has none)."""
    return {
        name: getattr(m, MASK_ATTR)[0]
        for name, m in model.named_modules()
        if getattr(m, MASK_ATTR, None) is not None
    }


def remove_masks(model: nn.Module) -> None:
    """Fold the masks into the weights (W <- W * M) for good and drop the hooks."""
    for module in model.modules():
        if getattr(module, MASK_ATTR, None) is not None:
            _apply_hook(module)
            _detach(module)


def magnitude_prune(model: nn.Module, sparsity: float, scope: Scope = "layer") -> dict[str, Tensor]:
    """Prune `model` in place to `sparsity` by magnitude and attach the masks (see the module
    docstring); returns the masks. Weights already zero count among the smallest, so calling it
    again with a higher sparsity (an iterative schedule) only removes more."""
    masks = magnitude_masks(model, sparsity, scope)
    attach_masks(model, masks)
    return masks


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable linears."""
    linears = prunable_linears(model).values()
    total = sum(m.weight.numel() for m in linears)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return zeros / max(1, total)


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of `steps` pruning rounds, Zhu & Gupta (2017):

        s_t = s_f + (s_i - s_f) (1 - t / n)^3,  t = 1..n

    fast at first, slower as fewer weights remain; the last round reaches s_f."""
    if steps < 1:
        raise ConfigError(f"an iterative schedule needs at least 1 step, got {steps}.")
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]
