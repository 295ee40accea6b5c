"""Model compression (模型压缩): quantization, pruning and distillation on the one core.

- `quantize`: quantized linears (weight-only int8/int4, dynamic int8) swapped in for `nn.Linear`s;
- `embedding`: int8 token embeddings;
- `prune`: unstructured magnitude pruning with masks that survive fine-tuning;
- `structured`: FFN neurons and attention heads removed by importance (the matrices shrink);
- `pipeline`: prune -> distill -> quantize with a measured report per stage.
"""

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
