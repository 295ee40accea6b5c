"""The key/value cache for incremental decoding.

Keys and values of every layer are preallocated once, (n_layer, B, H_kv, max_len, head_dim), and
written at the next free time step; decoding one token then costs one new key/value per layer
instead of recomputing the whole prefix. Cross-attention keys/values of an encoder-decoder are
computed once from the encoder output and kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.errors import GenerationError


class KVCache:
    """Preallocated per-layer key/value buffers, shared time axis for the whole batch."""

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # time steps already written (the same for every layer once advanced)
        self._cross: list[tuple[Tensor, Tensor] | None] = [None] * n_layer

    @classmethod
    def for_model(cls, cfg, batch: int, max_len: int, dtype=torch.float32, device="cpu"):
        """A cache sized for the decoder stack of a model with config `cfg`."""
        n_layer = cfg.n_decoder_layer if cfg.arch == "encoder-decoder" else cfg.n_layer
        return cls(n_layer, batch, cfg.n_kv_head, cfg.head_dim, max_len, dtype, device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, H_kv, T, hd) keys/values at the next T steps; return all steps so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise GenerationError(
                f"the sequence would reach {end} tokens but the cache holds {self.max_len}; "
                "ask for fewer new tokens or a shorter prompt."
            )
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more time steps as written (called once per forward, after all layers)."""
        self.length += n

    def cross_kv(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return self._cross[layer]

    def set_cross_kv(self, layer: int, k: Tensor, v: Tensor) -> None:
        self._cross[layer] = (k, v)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search): row i becomes old row index[i]."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self._cross = [
            None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
            for kv in self._cross
        ]
