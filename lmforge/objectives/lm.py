"""The autoregressive language-modelling objective.

P(X) = prod_t P(x_t | x_<t);  L = -(1/N) sum_t log P(x_t | x_<t)  (cross-entropy with one-hot
targets, averaged over the N target tokens that are not ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label value excluded from the loss (padding, prompt tokens)


@dataclass
class LossOutput:
    """loss: scalar to minimise; n_tokens: targets it averages over; metrics: extra numbers
    to log (float values, summed as token-weighted means by the loop)."""

    loss: Tensor
    n_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """L = -(1/N) sum_i log softmax(z_i)[y_i] over labels != IGNORE (computed in float32)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE
    )


def causal_lm_loss(model, batch: dict[str, Tensor]) -> LossOutput:
    """Next-token cross-entropy; `labels` are the inputs shifted by one (the batcher does it)."""
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    labels = batch["labels"]
    loss = cross_entropy(out.logits, labels)
    n = int((labels != IGNORE).sum())
    return LossOutput(loss, n)
