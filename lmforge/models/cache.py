"""The key/value cache for incremental decoding.

Keys and values of every layer are preallocated once, (n_layer, B, H_kv, max_len, head_dim), and
written at the next free time step; decoding one token then costs one new key/value per layer
instead of recomputing the whole prefix. Cross-attention keys/values of an encoder-decoder are
computed once from the encoder output and kept.

A rolling cache (`window=W`) keeps only the last W - 1 tokens (plus the first `sinks` tokens), so
generation of any length runs in constant memory:

- `sinks=0` (sliding-window attention, Mistral style): keys are stored rotated at their absolute
  positions and each query sees the W most recent keys;
- `sinks=S > 0` (attention sinks, StreamingLLM style): the first S tokens stay forever; keys are
  stored before RoPE and rotated at their slot in the cache (0 .. S+W-1) at every step, so the
  positions the model sees never exceed the cache size.
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
        window: int | None = None,
        sinks: int = 0,
    ) -> None:
        if window is not None:
            if window < 1 or sinks < 0:
                raise GenerationError(
                    f"a rolling cache needs window >= 1 and sinks >= 0, got {window} and {sinks}."
                )
            max_len = window + sinks
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # time steps already written (the same for every layer once advanced)
        self.window, self.sinks = window, sinks
        self._seen = 0  # tokens processed so far (rolling caches)
        self.pos = torch.zeros(
            max_len, dtype=torch.long, device=device
        )  # absolute position per slot
        self._cross: list[tuple[Tensor, Tensor] | None] = [None] * n_layer

    @classmethod
    def for_model(
        cls, cfg, batch: int, max_len: int, dtype=torch.float32, device="cpu", window=None, sinks=0
    ):
        """A cache sized for the decoder stack of a model with config `cfg`."""
        n_layer = cfg.n_decoder_layer if cfg.arch == "encoder-decoder" else cfg.n_layer
        if window is not None and cfg.pos in ("learned", "sinusoidal"):
            raise GenerationError(
                f"a rolling cache needs relative positions (rope, alibi, relative or none), but the "
                f"model uses pos='{cfg.pos}'."
            )
        n_kv = max(cfg.layer_kv_heads) if cfg.arch != "encoder-decoder" else cfg.n_kv_head
        return cls(n_layer, batch, n_kv, cfg.head_dim, max_len, dtype, device, window, sinks)

    # ------------------------------------------------------------------ rolling caches
    @property
    def rolling(self) -> bool:
        return self.window is not None

    @property
    def reposition(self) -> bool:
        """Keys are stored before RoPE and rotated at their slot (attention sinks)."""
        return self.rolling and self.sinks > 0

    @property
    def seen(self) -> int:
        """Tokens processed so far (= `length` unless the cache rolls)."""
        return self._seen if self.rolling else self.length

    def _keep(self, total: int, device) -> Tensor:
        """Slots kept of `total` (stored + new): the sinks, then the `window - 1` most recent,
        which is all the next token can see (itself being the window's last key)."""
        n_sink = min(self.sinks, total)
        recent = min(self.window - 1, total - n_sink)
        return torch.cat(
            [
                torch.arange(n_sink, device=device),
                torch.arange(total - recent, total, device=device),
            ]
        )

    def key_positions(self, t: int) -> Tensor:
        """Positions of the keys a call with `t` new tokens attends to: stored slots + new ones.

        Absolute token positions, or slot indices when the cache repositions (sinks)."""
        device = self.pos.device
        if self.reposition:
            return torch.arange(self.length + t, device=device)
        return torch.cat(
            [self.pos[: self.length], torch.arange(self._seen, self._seen + t, device=device)]
        )

    def sink_flags(self, t: int) -> Tensor | None:
        """(stored + t,) True for the sink keys, or None without sinks."""
        if not self.sinks:
            return None
        return torch.arange(self.length + t, device=self.pos.device) < self.sinks

    def _roll(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        h = k.size(1)
        ks = torch.cat([self.k[layer, :, :h, : self.length], k], dim=2)  # (B, H_kv, stored + T, hd)
        vs = torch.cat([self.v[layer, :, :h, : self.length], v], dim=2)
        keep = self._keep(ks.size(2), ks.device)
        self.k[layer, :, :h, : keep.numel()] = ks.index_select(2, keep)
        self.v[layer, :, :h, : keep.numel()] = vs.index_select(2, keep)
        return ks, vs

    # ------------------------------------------------------------------ updates
    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, H_kv, T, hd) keys/values at the next T steps; return all steps so far
        (for a rolling cache: the kept ones plus the new ones)."""
        if self.rolling:
            return self._roll(layer, k, v)
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise GenerationError(
                f"the sequence would reach {end} tokens but the cache holds {self.max_len}; "
                "ask for fewer new tokens or a shorter prompt."
            )
        h = k.size(1)  # a pruned block may have fewer key/value heads than the buffer
        self.k[layer, :, :h, start:end] = k
        self.v[layer, :, :h, start:end] = v
        return self.k[layer, :, :h, :end], self.v[layer, :, :h, :end]

    def advance(self, n: int) -> None:
        """Mark n more time steps as written (called once per forward, after all layers)."""
        if not self.rolling:
            self.length += n
            return
        new = torch.arange(self._seen, self._seen + n, device=self.pos.device)
        positions = torch.cat([self.pos[: self.length], new])
        keep = self._keep(positions.numel(), positions.device)
        self.pos[: keep.numel()] = positions[keep]
        self.length = keep.numel()
        self._seen += n

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
