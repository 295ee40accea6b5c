"""Weight-only and dynamic quantization of the linear layers, as module swaps (the transform).

`quantize_model(model, "int8" | "int4" | "dynamic-int8")` replaces the `nn.Linear` projections
(attention q/k/v/o, the MLP, the heads) by the quantized linears of `lmforge.models.quant`
(where the formulas, the kernels and the loading side live, since every verb loads quantized
checkpoints); the model's own forward calls them as modules, so every decode path (sampling,
beam, speculative, the server) runs the quantized weights. `quantization_record` gives the JSON
that `config.json` keeps (method, group size, which modules).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.quant import (
    ATTR,
    GROUP_SIZES,
    METHODS,
    DynamicInt8Linear,
    Int4Linear,
    Int8Linear,
    Method,
    QuantizedLinear,
    _swap,
    check_int4_shape,
    check_method,
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    prepare_quantized,
    quantize_int4,
    quantize_int8,
    quantized_modules,
    unpack_int4,
)

__all__ = [
    "GROUP_SIZES",
    "METHODS",
    "DynamicInt8Linear",
    "Int4Linear",
    "Int8Linear",
    "Method",
    "QuantizedLinear",
    "check_int4_shape",
    "check_method",
    "dequantize_int4",
    "dequantize_int8",
    "pack_int4",
    "prepare_quantized",
    "quantization_record",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
    "quantized_modules",
    "unpack_int4",
]


def _int4_fits(lin: nn.Linear, group_size: int) -> bool:
    # the CPU kernel packs 16 outputs and 2 inputs at a time
    return lin.in_features % group_size == 0 and lin.out_features % 16 == 0


def _make(method: str, lin: nn.Linear, group_size: int) -> QuantizedLinear:
    if method == "int8":
        return Int8Linear.from_linear(lin)
    if method == "int4":
        return Int4Linear.from_linear(lin, group_size)
    return DynamicInt8Linear.from_linear(lin)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) or fnmatchcase(name, "*." + p) for p in patterns)


def quantize_model(
    model: nn.Module,
    method: Method = "int8",
    group_size: int = 128,
    skip: Iterable[str] = (),
) -> nn.Module:
    """Swap every `nn.Linear` of `model` for its quantized version, in place.

    Args:
        model: an lmforge `Transformer` (any module works; a tied LM head gets its own
            quantized copy, the embedding stays in floating point).
        method: "int8" or "int4" (weight-only) or "dynamic-int8" (weights and activations).
        group_size: inputs per int4 group (32, 64, 128 or 256).
        skip: module name patterns to leave in floating point (`fnmatch` globs, also matched as
            a dotted suffix: "lm_head", "*.classifier").

    Returns:
        the same `model`, with `model.quantization` set to the record `config.json` keeps.
        int4 leaves a layer whose shape the kernel cannot take (in_features not divisible by
        the group size, out_features not a multiple of 16) in floating point; the record lists
        exactly the swapped modules.
    """
    check_method(method, group_size)
    if getattr(model, ATTR, None):
        raise ConfigError("this model is already quantized; quantize the original model.")
    skip = list(skip)
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear
        and not _matches(n, skip)
        and (method != "int4" or _int4_fits(m, group_size))
    ]
    if not names:
        raise ConfigError(
            "no linear layer is left to quantize (all are skipped or do not fit the group "
            "size); change --skip or --group-size."
        )
    with torch.no_grad():
        for name in names:
            _swap(model, name, _make(method, model.get_submodule(name), group_size))
    record: dict[str, Any] = {"method": method, "modules": names}
    if method == "int4":
        record["group_size"] = group_size
    setattr(model, ATTR, record)
    return model


def quantization_record(model: nn.Module) -> dict[str, Any] | None:
    """The JSON record of `quantize_model` (method, group size, modules), or None."""
    return getattr(model, ATTR, None)
