"""Compression as transforms on the one core: quantized linears (weight-only int8/int4, dynamic
int8) swapped in for `nn.Linear`s, and pruning."""

from lmforge.compress.quantize import (
    METHODS,
    DynamicInt8Linear,
    Int4Linear,
    Int8Linear,
    QuantizedLinear,
    prepare_quantized,
    quantization_record,
    quantize_model,
    quantized_modules,
)

__all__ = [
    "METHODS",
    "DynamicInt8Linear",
    "Int4Linear",
    "Int8Linear",
    "QuantizedLinear",
    "prepare_quantized",
    "quantization_record",
    "quantize_model",
    "quantized_modules",
]
