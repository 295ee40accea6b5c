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

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmforge.errors import GenerationError


class KVCache:
    """Preallocated per-layer key/value buffers, shared time axis for the whole batch.

    `ks[i]`, `vs[i]` are layer i's (B, H_kv_i, max_len, head_dim_i) buffers: layers may differ
    in their number of key/value heads and head size (pruned models). The cache owns every edit
    of them (`update`, `reorder`, `trim_front`, `gather_time`, `concat`, `step_view`).
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int | Sequence[int],
        head_dim: int | Sequence[int],
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
        heads = [n_kv_head] * n_layer if isinstance(n_kv_head, int) else list(n_kv_head)
        dims = [head_dim] * n_layer if isinstance(head_dim, int) else list(head_dim)
        shapes = [(batch, h, max_len, d) for h, d in zip(heads, dims, strict=True)]
        self.ks = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        self.vs = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        self.max_len = max_len
        self.length = 0  # time steps already written (the same for every layer once advanced)
        self.window, self.sinks = window, sinks
        self._seen = 0  # tokens processed so far (rolling caches)
        self.pos = torch.zeros(
            max_len, dtype=torch.long, device=device
        )  # absolute position per slot
        self._cross: list[tuple[Tensor, Tensor] | None] = [None] * n_layer
        # per-row bookkeeping of the decode step, all on the device (no host syncs):
        # keep[b, s] is False where slot s of row b holds padding (set once, at prefill),
        # next_pos[b] counts row b's real tokens (the position of its next one), and `slot`
        # mirrors `length` as a (1,) tensor: the slot the next token is written to
        self.keep = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)

    @classmethod
    def for_model(
        cls,
        cfg,
        batch: int,
        max_len: int,
        dtype=torch.float32,
        device="cpu",
        window=None,
        sinks=0,
        layers: Sequence[tuple[int, int]] | None = None,
    ):
        """A cache sized for the decoder stack of a model with config `cfg`; `layers`: each
        layer's (key/value heads, head size) when they differ from the config's."""
        n_layer = cfg.n_decoder_layer if cfg.arch == "encoder-decoder" else cfg.n_layer
        if window is not None and cfg.pos in ("learned", "sinusoidal"):
            raise GenerationError(
                f"a rolling cache needs relative positions (rope, alibi, relative or none), but the "
                f"model uses pos='{cfg.pos}'."
            )
        heads, dims = cfg.n_kv_head, cfg.head_dim
        if layers is not None:
            heads, dims = [h for h, _ in layers], [d for _, d in layers]
        return cls(n_layer, batch, heads, dims, max_len, dtype, device, window, sinks)

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
        ks = torch.cat([self.ks[layer][:, :, : self.length], k], dim=2)  # (B, H_kv, stored + T, hd)
        vs = torch.cat([self.vs[layer][:, :, : self.length], v], dim=2)
        keep = self._keep(ks.size(2), ks.device)
        self.ks[layer][:, :, : keep.numel()] = ks.index_select(2, keep)
        self.vs[layer][:, :, : keep.numel()] = vs.index_select(2, keep)
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
        self.ks[layer][:, :, start:end] = k
        self.vs[layer][:, :, start:end] = v
        return self.ks[layer][:, :, :end], self.vs[layer][:, :, :end]

    def advance(self, n: int, keep: Tensor | None = None) -> None:
        """Mark n more time steps as written (called once per forward, after all layers);
        keep: (B, n) 1 for tokens, 0 for padding among them (None: all tokens)."""
        if not self.rolling:
            if keep is not None:
                self.keep[:, self.length : self.length + n] = keep.bool()
                self.next_pos += keep.long().sum(1, keepdim=True)
            else:
                self.next_pos += n
            self.length += n
            self.slot.fill_(self.length)
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
        self.ks = [k.index_select(0, index) for k in self.ks]
        self.vs = [v.index_select(0, index) for v in self.vs]
        self.keep = self.keep.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self._cross = [
            None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
            for kv in self._cross
        ]

    @property
    def batch(self) -> int:
        return self.keep.size(0)

    @property
    def nbytes(self) -> int:
        """Bytes of the key/value buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.ks, *self.vs))

    def mask(self) -> Tensor:
        """(B, length) 1 for the tokens written so far, 0 for padding slots."""
        return self.keep[:, : self.length].long()

    # ------------------------------------------------------------------ whole-cache edits
    def trim_front(self, n: int) -> None:
        """Drop the first n slots of every row (columns that are padding in every row)."""
        if n <= 0:
            return
        self.ks = [k[:, :, n:] for k in self.ks]
        self.vs = [v[:, :, n:] for v in self.vs]
        self.keep = self.keep[:, n:]
        self.max_len -= n
        self.length -= n
        self.slot.fill_(self.length)

    def padding_columns(self) -> int:
        """Leading slots that are padding in every row (left padding shared by the batch)."""
        if self.length == 0:
            return 0
        return int((self.length - self.keep[:, : self.length].sum(1)).min())

    def gather_time(self, src: Tensor, keep: Tensor) -> None:
        """Row b's slot t becomes its old slot src[b, t]; keep (B, width) marks the tokens
        among the new slots, width = src.size(1) becomes the length."""
        width = src.size(1)
        for buf in (*self.ks, *self.vs):
            _, heads, _, head_dim = buf.shape
            index = src[:, None, :, None].expand(-1, heads, -1, head_dim)
            buf[:, :, :width] = buf.gather(2, index)
        self.keep[:, :width] = keep.bool()
        self.keep[:, width:] = True
        self.next_pos = keep.long().sum(1, keepdim=True)
        self.length = width
        self.slot.fill_(width)

    @staticmethod
    def concat(caches: list[KVCache], capacity: int) -> KVCache:
        """The rows of every cache in one cache of `capacity` slots, each right-aligned at the
        longest length (left padding, marked in `keep`, fills the front of shorter ones)."""
        first = caches[0]
        width = max(c.length for c in caches)
        k0 = first.ks[0]
        merged = KVCache(
            len(first.ks),
            sum(c.batch for c in caches),
            [k.size(1) for k in first.ks],
            [k.size(3) for k in first.ks],
            capacity,
            k0.dtype,
            k0.device,
        )
        row = 0
        for c in caches:
            rows, off = slice(row, row + c.batch), width - c.length
            for dst, src in zip((*merged.ks, *merged.vs), (*c.ks, *c.vs), strict=True):
                dst[rows, :, off:width] = src[:, :, : c.length]
            merged.keep[rows, :off] = False
            merged.keep[rows, off:width] = c.keep[:, : c.length]
            merged.next_pos[rows] = c.next_pos
            row += c.batch
        merged.length = width
        merged.slot.fill_(width)
        return merged

    # ------------------------------------------------------------------ the decode step
    def step_view(self, rows: slice = slice(None)) -> CacheView:
        """The tensors one decode step reads and writes (see `CacheView`); the step attends over
        the slots written so far plus the new one. `rows`: a range of batch rows only (views,
        so the step still writes into this cache; `stepped()` once every row has stepped)."""
        if self.rolling:
            raise GenerationError(
                "the decode step needs a non-rolling cache; decode a rolling cache with the "
                "model's forward."
            )
        end = self.length + 1
        if end > self.max_len:
            raise GenerationError(
                f"the sequence would reach {end} tokens but the cache holds {self.max_len}; "
                "ask for fewer new tokens or a shorter prompt."
            )
        every = rows == slice(None)

        def cut(t: Tensor, dim: int) -> Tensor:  # narrow: the cheapest view, ~60 a step
            return (t if every else t[rows]).narrow(dim, 0, end)

        cross = [kv if kv is None or every else (kv[0][rows], kv[1][rows]) for kv in self._cross]
        return CacheView(
            slot=self.slot,
            pos=self.next_pos if every else self.next_pos[rows],
            keep=cut(self.keep, 1),
            ks=[cut(k, 2) for k in self.ks],
            vs=[cut(v, 2) for v in self.vs],
            cross=cross,
        )

    def stepped(self) -> None:
        """Bookkeeping after one decode step (one new token per row, none of them padding)."""
        self.length += 1
        self.slot += 1  # in place: a compiled step's inputs keep their identity
        self.next_pos += 1


@dataclass
class CacheView:
    """What one decode step (one new token per row) needs, all tensors, no host state:

    slot: (1,) long, the cache slot of the new token (= tokens cached so far);
    pos: (B, 1) long, each row's position (its real, non-padding tokens so far);
    keep: (B, L) bool, False at padding slots, L = slot + 1;
    ks, vs: per layer (B, H_kv, L, head_dim) views of the cache (the slots written so far and
    the new one); cross: the cached cross-attention keys/values (encoder-decoder).

    Each block gets its layer's part, a `LayerView` (`layer(i)`), which stands in for the
    `KVCache` inside the block.
    """

    slot: Tensor
    pos: Tensor
    keep: Tensor
    ks: list[Tensor]
    vs: list[Tensor]
    cross: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)

    def cross_kv(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return self.cross[layer] if self.cross else None

    def layer(self, i: int) -> LayerView:
        """Layer i's part of the view (what one block reads and writes)."""
        return LayerView(self.slot, self.ks[i], self.vs[i], self.cross_kv(i))

    def step_mask(self, window: int | None, bias_fn, dtype: torch.dtype) -> Tensor:
        """(B, 1|H, 1, L) additive mask of the new query at `slot` over the L slots:

        allowed[b, j] = keep[b, j] and j <= slot [and slot - j < window]
        mask[b, j]    = bias(slot, j) if allowed[b, j] else the dtype's minimum
        """
        keep = self.keep
        slots = torch.arange(keep.size(1), device=keep.device)  # (L,)
        allowed = keep & (slots <= self.slot)[None]  # (B, L)
        if window is not None:
            allowed = allowed & ((self.slot - slots) < window)[None]
        allowed = allowed[:, None, None, :]  # (B, 1, 1, L)
        lowest = torch.finfo(dtype).min
        if bias_fn is None:
            return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(
                ~allowed, lowest
            )
        bias = bias_fn(self.slot, slots).to(dtype)  # (1, H, 1, L)
        return bias.masked_fill(~allowed, lowest)


@dataclass
class LayerView:
    """One layer's part of a `CacheView`: the slot, its (B, H_kv, L, head_dim) keys and values
    and its cross-attention keys/values. A block given this view reads no layer index from it
    (`update` and `cross_kv` ignore the index they are passed), so one compiled run of blocks serves
    every layer of a stack (regional compilation, `lmforge.generate.static`)."""

    slot: Tensor
    k: Tensor
    v: Tensor
    cross: tuple[Tensor, Tensor] | None = None

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, H_kv, 1, hd) keys/values at `slot` with index_copy_; return the
        (B, H_kv, L, hd) keys/values."""
        self.k.index_copy_(2, self.slot, k)
        self.v.index_copy_(2, self.slot, v)
        return self.k, self.v

    def cross_kv(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return self.cross
