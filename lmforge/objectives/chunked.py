"""Cross-entropy of an LM head computed over chunks of rows, never holding the whole batch's
logits.

For N rows of hidden states h (N, d), the head's weight W (V, d) and targets y:

    z_i = W h_i                                  (the logits of row i, float32)
    l_i = (1 - e) (lse(z_i) - z_{i,y_i}) + e (lse(z_i) - mean_j z_{i,j})      (e: label smoothing)
    L   = (1/N') sum_{i: y_i != ignore} l_i      (N' rows scored)

and its gradients, with p_i = softmax(z_i):

    dL/dz_i = (p_i - (1 - e) onehot(y_i) - e / V) / N'      (0 for ignored rows)
    dL/dh_i = W^T dL/dz_i;   dL/dW = sum_i dL/dz_i h_i^T

`F.cross_entropy(h @ W.T, y, ignore_index, label_smoothing)` on the full logits is the plain
reference (`reference_lm_head_cross_entropy`); it keeps (N, V) float32 logits, their softmax
and their gradient alive at once: 3 x 200 MB for a batch of 4 x 256 tokens and a 49,152-word
vocabulary. Here the forward pass takes `rows` rows at a time, computes their logits, loss and
both gradients at once (the three matrix multiplies a training step does anyway), and keeps
only dL/dh (N, d) and dL/dW (V, d); the backward pass scales them by the incoming gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # as lmforge.objectives.lm.IGNORE (that module imports this one)

#: float32 logits held per chunk (rows x vocabulary): 16 Mi entries = 64 MiB (smaller chunks
#: make the three matrix multiplies per chunk slower on a CPU).
CHUNK_ENTRIES = 1 << 24


def chunk_rows(vocab_size: int, entries: int = CHUNK_ENTRIES) -> int:
    """Rows per chunk so that one chunk's float32 logits hold about `entries` numbers."""
    return max(1, entries // vocab_size)


def reference_lm_head_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    ignore_index: int = IGNORE,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The plain formula: full (N, V) logits (float32 or wider) and `F.cross_entropy`."""
    logits = _wide(hidden @ weight.t())
    return F.cross_entropy(
        logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing
    )


def lm_head_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    ignore_index: int = IGNORE,
    label_smoothing: float = 0.0,
    rows: int | None = None,
    zero_if_empty: bool = False,
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of the logits `hidden @ weight.T` against `labels`, chunk by chunk
    (module docstring), and the number of scored rows whose argmax is the label.

    Args:
        hidden: (N, d) hidden states (what the LM head multiplies).
        weight: (V, d) the LM head's weight (tied or not).
        labels: (N,) target ids; `ignore_index` rows are not scored.
        label_smoothing: e in [0, 1), as `F.cross_entropy`'s.
        rows: rows per chunk (default: `chunk_rows(V)`).
        zero_if_empty: when no row is scored, a zero loss with zero gradients instead of NaN
            (N' is taken as max(N', 1); deciding on the host would wait for the device).
    Returns:
        (loss, hits): the scalar float32 loss (NaN when no row is scored, as `F.cross_entropy`,
        unless `zero_if_empty`) and a long scalar without gradient.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"lm_head_cross_entropy wants (N, d) hidden states and (N,) labels, got "
            f"{tuple(hidden.shape)} and {tuple(labels.shape)}."
        )
    rows = rows or chunk_rows(weight.size(0))
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    dtype = torch.get_autocast_dtype(hidden.device.type) if _autocasting(hidden) else None
    return _LMHeadCrossEntropy.apply(
        hidden, weight, labels, ignore_index, float(label_smoothing), rows, need_grad, dtype,
        zero_if_empty,
    )  # fmt: skip


def _wide(z: Tensor) -> Tensor:
    """Logits in float32, or float64 when they already are."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


def _autocasting(t: Tensor) -> bool:
    return torch.is_autocast_enabled(t.device.type)


class _LMHeadCrossEntropy(torch.autograd.Function):
    """Loss and both gradients in one chunked pass; backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, smoothing, rows, need_grad, dtype, zero):
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden if dtype is None else hidden.to(dtype)
            w = weight if dtype is None else weight.to(dtype)
            loss, hits, grad_h, grad_w = _chunks(
                h, w, labels, ignore_index, smoothing, rows, need_grad, zero
            )
        ctx.mark_non_differentiable(hits)
        ctx.grads = (
            grad_h.to(hidden.dtype) if grad_h is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
        )
        return loss, hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        if grad_h is None:
            raise RuntimeError("lm_head_cross_entropy was called without gradients enabled.")
        g = grad_loss.to(grad_h.dtype)
        grads = (grad_h.mul_(g), grad_w.mul_(g.to(grad_w.dtype)))
        return (*grads, None, None, None, None, None, None, None)


def _chunks(
    h: Tensor,
    w: Tensor,
    labels: Tensor,
    ignore_index: int,
    smoothing: float,
    rows: int,
    need_grad: bool,
    zero_if_empty: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    n_rows, vocab = h.size(0), w.size(0)
    scored = labels != ignore_index
    total = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
    n = scored.sum().to(total.dtype)
    if zero_if_empty:
        n = n.clamp(min=1)
    hits = torch.zeros((), dtype=torch.long, device=h.device)
    grad_h = torch.empty_like(h) if need_grad else None
    acc = torch.promote_types(w.dtype, torch.float32)
    grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_grad else None
    for s in range(0, n_rows, rows):
        hc, yc, mc = h[s : s + rows], labels[s : s + rows], scored[s : s + rows]
        y = yc.masked_fill(~mc, 0)[:, None]
        z = _wide(hc @ w.t())  # (c, V)
        lse = torch.logsumexp(z, dim=-1)
        row_loss = lse - z.gather(1, y).squeeze(1)
        if smoothing:
            row_loss = (1 - smoothing) * row_loss + smoothing * (lse - z.mean(-1))
        total += (row_loss * mc).sum()
        hits += ((z.argmax(-1) == yc) & mc).sum()
        if not need_grad:
            continue
        dz = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
        dz.scatter_add_(1, y, torch.full_like(y, smoothing - 1, dtype=dz.dtype))
        if smoothing:
            dz.sub_(smoothing / vocab)
        dz = dz.to(h.dtype)
        # the row weights mask / N' scale the small (c, d) factors, not the (c, V) logits
        scale = (mc / n).to(h.dtype)[:, None]
        torch.mm(dz, w, out=grad_h[s : s + rows]).mul_(scale)
        if dz.dtype == acc:
            grad_w.addmm_(dz.t(), hc * scale)
        else:
            grad_w += (dz.t() @ (hc * scale)).to(acc)
    return total / n, hits, grad_h, grad_w
