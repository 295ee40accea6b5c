"""Which keys each query may see, described by positions instead of a T x T tensor.

An `AttentionMask` holds the query and key positions, the causal rule, an optional sliding window
(with always-visible "sink" keys), key padding and a bias function (ALiBi, T5 buckets). The
attention kernels ask it for the additive mask of the block of queries they are working on, so
the chunked backend never holds more than (chunk x T_k) of it; the dense backends take it whole.

    allowed(i, j) = [k_j <= q_i if causal] and [q_i - k_j < window or j is a sink] and keep_j
    mask(i, j)    = bias(i, j) if allowed(i, j) else -inf (the dtype's minimum)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

BiasFn = Callable[[Tensor, Tensor], Tensor]  # (q_pos (tq,), k_pos (tk,)) -> (1, H, tq, tk)


@dataclass
class AttentionMask:
    """Attributes:
    q_pos: (Tq,) positions of the queries; k_pos: (Tk,) positions of the keys.
    causal: keys after a query are hidden.
    window: a query sees only keys with q - k < window (None = no window).
    sinks: (Tk,) bool, keys visible to every later query whatever the window.
    key_keep: (B, Tk) bool, False for padding keys.
    bias_fn: additive per-head bias from positions.
    n_prefix: leading key columns (prefix tuning) that every query sees, without bias.
    """

    q_pos: Tensor
    k_pos: Tensor
    causal: bool
    window: int | None = None
    sinks: Tensor | None = None
    key_keep: Tensor | None = None
    bias_fn: BiasFn | None = None
    n_prefix: int = 0
    # dense masks already built, by dtype: every block of a forward reads the same one
    _dense: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_plain(self) -> bool:
        """True when only the causal rule applies over contiguous positions (SDPA's is_causal
        or no mask at all can stand in for it)."""
        return (
            self.window is None
            and self.key_keep is None
            and self.bias_fn is None
            and not self.n_prefix
        )

    def with_prefix(self, n: int) -> AttentionMask:
        return replace(self, n_prefix=self.n_prefix + n)

    def block(self, dtype: torch.dtype, q0: int = 0, q1: int | None = None) -> Tensor:
        """The additive mask of queries [q0, q1) over all keys: (B|1, H|1, tq, n_prefix + Tk)."""
        q = self.q_pos[q0:q1][:, None]  # (tq, 1)
        k = self.k_pos[None, :]  # (1, Tk)
        allowed = torch.ones(q.size(0), k.size(1), dtype=torch.bool, device=q.device)
        if self.causal:
            allowed &= k <= q
        if self.window is not None:
            near = (q - k) < self.window
            if self.sinks is not None:
                near |= self.sinks[None, :]
            allowed &= near
        allowed = allowed[None, None]  # (1, 1, tq, Tk)
        if self.key_keep is not None:
            allowed = allowed & self.key_keep[:, None, None, :].bool()  # (B, 1, tq, Tk)
        lowest = torch.finfo(dtype).min
        if self.bias_fn is not None:
            bias = self.bias_fn(self.q_pos[q0:q1], self.k_pos).to(dtype)  # (1, H, tq, Tk)
            mask = bias.masked_fill(~allowed, lowest)
        else:
            mask = torch.zeros(allowed.shape, dtype=dtype, device=q.device).masked_fill(
                ~allowed, lowest
            )
        if self.n_prefix:
            mask = torch.nn.functional.pad(mask, (self.n_prefix, 0))  # prefix columns: visible
        return mask

    def dense(self, dtype: torch.dtype) -> Tensor:
        """The whole additive mask, (B|1, H|1, Tq, n_prefix + Tk); built once per dtype and
        reused by every block (not with a bias_fn, whose bias may be a block's own)."""
        if self.bias_fn is not None:
            return self.block(dtype)
        if dtype not in self._dense:
            self._dense[dtype] = self.block(dtype)
        return self._dense[dtype]
