"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.config.train import TrainConfig
from lmforge.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices of linear layers decay; norms, biases and embeddings do not."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; a setting AdamW refuses is one sentence naming the key.

    The update runs as PyTorch's fused kernel (one pass over each parameter, moments and
    gradient) where `fused_supported` says it can, else as the multi-tensor (foreach) form; both
    compute the same update as the plain per-parameter loop (tests/train/test_optim.py).
    """
    check_adamw(cfg)
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = fused_supported(params)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
        foreach=None if fused else True,
    )


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch's fused AdamW takes these parameters: plain (not sharded DTensor)
    floating-point tensors, all on one CPU or CUDA device."""
    if not params:
        return False
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(type(p.data) is torch.Tensor and p.is_floating_point() for p in params)
    )


def check_adamw(cfg: TrainConfig) -> None:
    """The ranges AdamW accepts: lr, eps, weight_decay >= 0 and finite, betas in [0, 1)."""
    for key in ("lr", "eps", "weight_decay", "beta1", "beta2"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{key} must be a finite number >= 0, got {value}.")
    for key in ("beta1", "beta2"):
        if getattr(cfg, key) >= 1:
            raise ConfigError(f"{key} must be in [0, 1), got {getattr(cfg, key)}.")


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at optimizer step `step` (0-based).

    warm-up:  lr * (step + 1) / warmup_steps            for step < warmup_steps
    cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2,  r = progress after warm-up in [0, 1]
    linear:   lr - (lr - min_lr) * r;   constant: lr
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    r = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - cfg.min_lr) * r
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))


def clip_scale(norm: torch.Tensor, clip: float) -> torch.Tensor:
    """The divisor that clips gradients of total norm `norm` to `clip`:

        scale = max(1, (norm + 1e-6) / clip),   g / scale = g * min(1, clip / (norm + 1e-6))

    which is `torch.nn.utils.clip_grad_norm_`'s factor, inverted for fused AdamW's `grad_scale`
    (the kernel divides each gradient by it as it reads it: no pass of its own)."""
    return torch.clamp((norm + 1e-6) / clip, min=1.0)


def masked_step(
    optimizer: torch.optim.Optimizer, skip: torch.Tensor, grad_scale: torch.Tensor | None = None
) -> None:
    """`optimizer.step()` on the gradients divided by `grad_scale` (None = as they are), unless
    `skip` (a 0-d bool tensor) is true: then parameters, moments and step counts stay as they
    were.

    Fused AdamW takes both into its kernel (`grad_scale`, `found_inf`: the way a GradScaler
    hands them over), so the host never reads them; any other optimizer reads `skip` first
    (one host sync) and takes no `grad_scale`.
    """
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale = grad_scale  # type: ignore[attr-defined]
        optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
        return
    if grad_scale is not None:
        raise ValueError("grad_scale needs fused AdamW; clip the gradients in place instead.")
    if not bool(skip):
        optimizer.step()
