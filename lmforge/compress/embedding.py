"""Int8 token embeddings: the table stored as int8 rows with one scale each.

In a small encoder the embedding table is most of the file (all-MiniLM-L6-v2: 11.7M of 22.7M
parameters), and the quantized linears leave it in floating point. Per row e (one token):

    s = max|e| / 127,   q = clamp(round(e / s), -127, 127),   e_hat = q s

A lookup gathers the int8 rows of the ids and multiplies by their scales, so only the looked-up
rows are ever dequantized. The module swap keeps the name (`embed.tok`) and stores `weight`
(int8) and `scale` (float) as plain tensors; a table shared with a tied LM head is left alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError

EMBED = "embed.tok"


def quantize_rows_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(V, d) float -> (V, d) int8 codes and (V,) scales, s = max|row| / 127 (1 for a zero row)."""
    s = w.abs().amax(dim=1).float() / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round(w.float() / s[:, None]), -127, 127).to(torch.int8)
    return q, s


class Int8Embedding(nn.Module):
    """An `nn.Embedding` with int8 rows: forward(ids) = q[ids] * s[ids] (see the module doc)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = (
            num_embeddings,
            embedding_dim,
            dtype,
        )
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> Int8Embedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.weight.dtype)
        q, s = quantize_rows_int8(emb.weight.detach())
        new.weight.copy_(q)
        new.scale.copy_(s)
        return new.to(emb.weight.device)

    def dequantized_weight(self) -> Tensor:
        """The whole table, e_hat = q s (the plain rule the lookup must match)."""
        return (self.weight.float() * self.scale[:, None]).to(self.out_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.weight[ids].float() * self.scale[ids].unsqueeze(-1)  # (..., d)
        return rows.to(self.out_dtype)


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


def prepare_quantized_embeddings(model: nn.Module, names: list[str]) -> None:
    """Swap empty `Int8Embedding`s in for the names of a record, ready for a state load."""
    for name in names:
        if name != EMBED:
            raise ConfigError(f"unknown quantized embedding '{name}' in config.json.")
        embed = model.get_submodule("embed")
        embed.tok = Int8Embedding(embed.tok.num_embeddings, embed.tok.embedding_dim)
