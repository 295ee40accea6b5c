"""Int8 token embeddings: the table stored as int8 rows with one scale each.

In a small encoder the embedding table is most of the file (all-MiniLM-L6-v2: 11.7M of 22.7M
parameters), and the quantized linears leave it in floating point. Per row e (one token):

    s = max|e| / 127,   q = clamp(round(e / s), -127, 127),   e_hat = q s

A lookup gathers the int8 rows of the ids and multiplies by their scales, so only the looked-up
rows are ever dequantized. The module swap keeps the name (`embed.tok`) and stores `weight`
(int8) and `scale` (float) as plain tensors; a table shared with a tied LM head is left alone.
The module (`Int8Embedding`) lives in `lmforge.models.quant`, which loads it; this is the swap.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.quant import (
    EMBED,
    Int8Embedding,
    prepare_quantized_embeddings,
    quantize_rows_int8,
)

__all__ = [
    "Int8Embedding",
    "prepare_quantized_embeddings",
    "quantize_embeddings",
    "quantize_rows_int8",
]


def _tied(model: nn.Module, emb: nn.Embedding) -> bool:
    return any(
        p is emb.weight
        for n, p in model.named_parameters(remove_duplicate=False)
        if n != f"{EMBED}.weight"
    )


def quantize_embeddings(model: nn.Module) -> list[str]:
    """Swap the token embedding for an `Int8Embedding` in place, unless a head shares its
    weight; returns the names swapped (for the quantization record)."""
    embed = model.get_submodule("embed")
    if not isinstance(embed.tok, nn.Embedding) or _tied(model, embed.tok):
        return []
    with torch.no_grad():
        embed.tok = Int8Embedding.from_embedding(embed.tok)
    return [EMBED]
