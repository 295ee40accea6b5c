"""Negative sampling and in-batch contrastive losses (for embeddings and retrieval).

Negative sampling (word2vec-style), for one positive score s+ and k sampled negatives s-_j:
    L = -log sigma(s+) - sum_j log sigma(-s-_j)
In-batch softmax (InfoNCE): every other pair in the batch is a negative. With unit vectors
a_i, b_i and temperature tau, S_ij = a_i . b_j / tau and
    L = -(1/B) sum_i log softmax_j(S_ij)[j = i]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def negative_sampling_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Mean over the batch of -log sigma(s+) - sum_j log sigma(-s-_j).

    Args:
        pos: (B,) scores of the true pairs.
        neg: (B, k) scores of the k sampled negatives of each.
    """
    if neg.dim() != 2 or pos.shape != neg.shape[:1]:
        raise ValueError(f"pos must be (B,) and neg (B, k); got {tuple(pos.shape)} and "
                         f"{tuple(neg.shape)}.")  # fmt: skip
    # log sigma(x) = -softplus(-x), computed stably
    return (F.softplus(-pos.float()) + F.softplus(neg.float()).sum(-1)).mean()


def in_batch_contrastive_loss(
    a: Tensor,
    b: Tensor,
    temperature: float = 0.05,
    negatives: Tensor | None = None,
    same: Tensor | None = None,
) -> Tensor:
    """InfoNCE with in-batch negatives: a_i should match b_i among all b_j (and hard negatives).

    The keys are k = [b_1..b_B, n_1..n_M] (M = 0 without `negatives`), S_ij = a_i . k_j / tau,
    L = -(1/B) sum_i log softmax_j(S_ij)[j = i]. A key j != i marked in `same[i, j]` (for
    example the same positive text twice in a batch) is left out of row i's softmax.

    Args:
        a, b: (B, d) embeddings of the two sides of each pair (normalised here).
        temperature: tau > 0; smaller sharpens the softmax.
        negatives: (M, d) extra keys every row is contrasted with (hard negatives), or None.
        same: (B, B + M) bool, True where key j is not a negative of row i (the diagonal is
            ignored), or None.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    if negatives is not None:
        b = torch.cat([b, F.normalize(negatives.float(), dim=-1)])
    scores = a @ b.T / temperature  # (B, B + M)
    target = torch.arange(a.size(0), device=a.device)
    if same is not None:
        drop = same.clone()
        drop[target, target] = False
        scores = scores.masked_fill(drop, float("-inf"))
    return F.cross_entropy(scores, target)
