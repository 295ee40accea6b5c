"""The autoregressive language-modelling objective.

P(X) = prod_t P(x_t | x_<t);  L = -(1/N) sum_t log P(x_t | x_<t)  (cross-entropy with one-hot
targets, averaged over the N target tokens that are not ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lmforge.config.train import TrainConfig
from lmforge.models import Transformer
from lmforge.objectives.chunked import lm_head_cross_entropy

IGNORE = -100  # label value excluded from the loss (padding, prompt tokens)


@dataclass
class LossOutput:
    """loss: scalar to minimise; n_tokens: targets it averages over (an int, or a 0-d tensor
    where counting would make the host wait for the device: `int(out.n_tokens)` reads it);
    metrics: extra numbers to log (floats or 0-d tensors, summed as token-weighted means by
    the loop)."""

    loss: Tensor
    n_tokens: int | Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """L = -(1/N) sum_i log softmax(z_i)[y_i] over labels != IGNORE (computed in float32)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE
    )


def scored_cross_entropy(
    logits: Tensor, labels: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy over the positions whose label is not IGNORE, without a host sync.

        L = sum_i w_{y_i} CE(z_i, y_i) / max(sum_i w_{y_i}, tiny)   (w = 1 without class weights)

    The same as `F.cross_entropy(..., weight, ignore_index=IGNORE)`, except that a batch with no
    scored position gives a zero loss that still has a graph (not NaN), decided on the device.

    Args:
        logits: (..., C); labels: (...) class ids or IGNORE; weight: (C,) class weights or None.
    Returns:
        (loss, n, hits): the float32 loss, the number of scored positions and the number of them
        whose argmax is the label (0-d tensors; `int(n)` reads n on the host).
    """
    z, y = logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1)
    scored = y != IGNORE
    total = F.cross_entropy(z, y, weight=weight, ignore_index=IGNORE, reduction="sum")
    n = scored.sum()
    denom = n if weight is None else (weight[y.clamp(min=0)] * scored).sum()
    loss = total / denom.clamp(min=torch.finfo(torch.float32).tiny)
    hits = ((z.argmax(-1) == y) & scored).sum()
    return loss, n, hits


def share(hits: Tensor, n: Tensor) -> Tensor:
    """hits / n as a float tensor, 0 when n is 0 (no host sync)."""
    return hits.float() / n.clamp(min=1)


#: Vocabulary size from which the LM objectives apply the LM head in chunks of rows
#: (`lmforge.objectives.chunked`) instead of materialising the whole batch's logits; 0 (the
#: train key's default) = never.
CHUNK_VOCAB: int = TrainConfig.chunked_ce_vocab


def chunkable_heads(model: nn.Module, chunk_vocab: int):
    """The `Heads` of `model` (through torch.compile and DDP wrappers) when its LM head can be
    applied in chunks: an lmforge Transformer with an "lm" head that is a plain bias-free
    `nn.Linear` over a plain tensor (not a LoRA/quantized swap, not an FSDP shard) and a
    vocabulary of at least `chunk_vocab` (> 0); else None."""
    inner = model
    while True:
        if hasattr(inner, "_orig_mod"):  # torch.compile
            inner = inner._orig_mod
        elif isinstance(inner, DistributedDataParallel):
            inner = inner.module
        else:
            break
    if not isinstance(inner, Transformer) or "lm" not in inner.cfg.heads:
        return None
    head = inner.heads.lm_head
    ok = type(head) is nn.Linear and head.bias is None and type(head.weight.data) is Tensor
    if not ok or chunk_vocab <= 0 or head.out_features < chunk_vocab:
        return None
    return inner.heads


def chunked_lm_loss(
    heads, hidden: Tensor, labels: Tensor, rows: int | None = None, zero_if_empty: bool = False
):
    """(loss, hits) of `heads`' LM head over (B, T, d) hidden states, chunk by chunk."""
    if heads.logit_scale != 1.0:
        hidden = hidden * heads.logit_scale
    d = hidden.size(-1)
    return lm_head_cross_entropy(
        hidden.reshape(-1, d), heads.lm_head.weight, labels.reshape(-1), rows=rows,
        zero_if_empty=zero_if_empty,
    )  # fmt: skip


@dataclass
class CausalLMLoss:
    """Next-token cross-entropy; `labels` are the inputs shifted by one (the batcher does it).

    Attributes:
        chunk_vocab: from this vocabulary size on, the LM head and the loss run over chunks of
            rows (`lmforge.objectives.chunked`: the same loss and gradients without the
            batch's full float32 logits); 0 = never.
        chunk_rows: rows per chunk (None: about 64 MiB of float32 logits per chunk).
    """

    chunk_vocab: int = CHUNK_VOCAB
    chunk_rows: int | None = None

    def __call__(self, model, batch: dict[str, Tensor]) -> LossOutput:
        labels = batch["labels"]
        n = (labels != IGNORE).sum()  # a tensor: counting it here would be a host sync
        heads = chunkable_heads(model, self.chunk_vocab)
        mask = batch.get("attention_mask")
        if heads is None:
            out = model(batch["input_ids"], attention_mask=mask)
            return LossOutput(cross_entropy(out.logits, labels), n)
        out = model(batch["input_ids"], attention_mask=mask, lm_logits=False)
        loss, _ = chunked_lm_loss(heads, out.hidden, labels, self.chunk_rows)
        return LossOutput(loss, n)


#: The causal-LM objective with the default chunking threshold.
causal_lm_loss = CausalLMLoss()
