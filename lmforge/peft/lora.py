"""LoRA: low-rank adaptation as a drop-in replacement of `nn.Linear`.

    W' = W + (alpha / r) B A,   A in R^{r x k} (random),  B in R^{d x r} (zeros at the start)
    y  = x W^T + b + (alpha / r) dropout(x) A^T B^T

W (d x k) and b stay frozen under their own names (`...q_proj.weight`, `...q_proj.bias`), so a
base state dict still loads into a LoRA model; only A and B (`lora_A`, `lora_B`) train. Because B
starts at zero, a freshly applied LoRA leaves the model's output unchanged. After training,
`merge()` folds (alpha / r) B A into W (no extra cost at inference) and `unmerge()` takes it out
again; `merge_lora` turns every `LoRALinear` back into a plain `nn.Linear` for export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import AdapterError
from lmforge.peft.base import freeze_base, match_modules, peft_configs, register, unregister


@dataclass
class LoRAConfig:
    """How LoRA is applied.

    Attributes:
        r: rank of the update B A.
        alpha: the update is scaled by alpha / r.
        dropout: dropout on the input of the LoRA path (training only).
        targets: name patterns of the linear layers to adapt (see `lmforge.peft.base`);
            the default adapts the query and value projections of every attention layer.
        train_bias: also train the biases of the adapted layers (saved with the adapter).
        modules_to_save: patterns of modules trained in full and saved with the adapter, such as
            a new classification head (`heads.classifier`).
    """

    method: ClassVar[str] = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["*.q_proj", "*.v_proj"])
    train_bias: bool = False
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets, self.modules_to_save = list(self.targets), list(self.modules_to_save)
        if self.r < 1:
            raise AdapterError(f"LoRA rank r must be at least 1, got {self.r}.")
        if self.alpha <= 0:
            raise AdapterError(f"LoRA alpha must be positive, got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise AdapterError("LoRA needs at least one target pattern, such as '*.q_proj'.")


class LoRALinear(nn.Module):
    """y = x W^T + b + (alpha / r) dropout(x) A^T B^T, a drop-in for the `nn.Linear` it wraps.

    Args:
        base: the layer to adapt; its `weight` and `bias` are kept (same Parameters, same keys).
        r: rank; alpha: scale numerator (scaling = alpha / r); dropout: on the LoRA input.
        train_bias: report the bias as an adapter parameter (trained and saved with A and B).

    Attributes:
        merged: the update is folded into `weight` (forward is one matmul).
        disabled: forward computes the base layer alone, x W^T + b (merged or not).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        train_bias: bool = False,
    ) -> None:
        super().__init__()
        if r < 1:
            raise AdapterError(f"LoRA rank r must be at least 1, got {r}.")
        self.in_features, self.out_features = base.in_features, base.out_features
        if is_quantized(base):
            # QLoRA: the frozen quantized layer computes x W_hat^T + b itself
            self.base_layer = base
            w = base.bias if base.bias is not None else base.scales
            w = torch.empty(0, device=w.device)  # float32 A and B
        else:
            self.base_layer = None
            self.weight = base.weight  # (d, k), frozen
            w = base.weight
        self.register_parameter("bias", base.bias)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(
            torch.empty(self.out_features, r, dtype=w.dtype, device=w.device)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.train_bias = train_bias and base.bias is not None
        self.merged = False
        self.disabled = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as `nn.Linear` initialises weights), B = 0, so B A = 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def adapter_parameter_names(self) -> list[str]:
        return ["lora_A", "lora_B"] + (["bias"] if self.train_bias else [])

    def delta_weight(self) -> Tensor:
        """(alpha / r) B A, the (d, k) update of W, computed in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def _lora(self, x: Tensor) -> Tensor:
        a = self.lora_A
        h = F.linear(F.linear(x.to(a.dtype), a), self.lora_B)  # (..., r) -> (..., d)
        return h * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        if self.base_layer is not None:
            out = self.base_layer(x)
            return out if self.disabled else out + self._lora(self.dropout(x)).to(out.dtype)
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out - self._lora(x).to(out.dtype) if self.disabled else out
        if self.disabled:
            return out
        return out + self._lora(self.dropout(x)).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (alpha / r) B A (no-op when already merged)."""
        if self.base_layer is not None:
            raise AdapterError(
                "LoRA on a quantized base cannot be merged into its integer weights; keep the "
                "adapter separate, or train it on the floating-point model to merge."
            )
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (alpha / r) B A: the original weight again, up to float rounding."""
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding the merged weight (the same Parameter objects)."""
        self.merge()
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        lin.weight = self.weight
        if self.bias is not None:
            lin.bias = self.bias
        return lin

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha}, merged={self.merged}, disabled={self.disabled}"
        )


def _check_not_tied(model: nn.Module, name: str) -> None:
    """A tied weight would change its twin too when merged; refuse it up front."""
    if is_quantized(model.get_submodule(name)):
        return  # a quantized layer holds its own integer copy and is never merged
    weight = model.get_submodule(name).weight
    twins = [
        n.rsplit(".", 1)[0]
        for n, p in model.named_parameters(remove_duplicate=False)
        if p is weight and n != f"{name}.weight"
    ]
    if twins:
        raise AdapterError(
            f"LoRA target '{name}' shares its weight with '{twins[0]}' (tied embeddings), so a "
            "merge would change both; leave it out of targets or use an untied model."
        )


def is_quantized(layer: nn.Module) -> bool:
    """A quantized linear of `lmforge.compress` (known by its `dequantized_weight` method)."""
    return not isinstance(layer, nn.Linear) and callable(getattr(layer, "dequantized_weight", None))


def _quantized_types(model: nn.Module) -> tuple[type, ...]:
    return tuple({type(m) for m in model.modules() if is_quantized(m)})


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_lora(model: nn.Module, cfg: LoRAConfig | None = None) -> nn.Module:
    """Replace the target linear layers of `model` by `LoRALinear`s, in place, and freeze the rest.

    Afterwards only the LoRA matrices (plus biases if `train_bias`, plus `modules_to_save`, plus
    any other adapter already attached) have requires_grad, so `lmforge.train.fit` trains just
    them. Raises `AdapterError` when a pattern matches no linear layer or a target is tied.

    Returns:
        the same `model`, for chaining.
    """
    cfg = cfg or LoRAConfig()
    if "lora" in peft_configs(model):
        raise AdapterError(
            "this model already has LoRA; merge_lora it first or start from a fresh base model."
        )
    names = match_modules(
        model, cfg.targets, kind=(nn.Linear, *_quantized_types(model)), what="LoRA target"
    )
    if cfg.modules_to_save:
        match_modules(model, cfg.modules_to_save, what="modules_to_save entry")
    for name in names:
        _check_not_tied(model, name)
    for name in names:
        base = model.get_submodule(name)
        _swap(model, name, LoRALinear(base, cfg.r, cfg.alpha, cfg.dropout, cfg.train_bias))
    register(model, cfg)
    freeze_base(model)
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The `LoRALinear` layers of `model` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_lora(model: nn.Module, *, merged: bool | None = None, disabled: bool | None = None) -> None:
    """Merge/unmerge or disable/enable every LoRA layer of `model` at once."""
    for m in lora_modules(model).values():
        if merged is True:
            m.merge()
        elif merged is False:
            m.unmerge()
        if disabled is not None:
            m.disabled = disabled


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its weight and put plain `nn.Linear`s back, in place.

    The result has the base model's state-dict keys (ready for `lmforge.models.save_model`); the
    requires_grad flags are left as they were.
    """
    layers = lora_modules(model)
    if not layers:
        raise AdapterError(
            "this model has no LoRA layers to merge; apply_lora or load_adapter first."
        )
    for name, layer in layers.items():
        _swap(model, name, layer.to_linear())
    unregister(model, "lora")
    return model
