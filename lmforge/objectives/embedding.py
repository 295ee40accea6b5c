"""The sentence-embedding objective: contrast each query with its positive against negatives.

    q_i = pool(model(query_i)), p_i = pool(model(positive_i)), n_m = pool(model(negative_m))
    keys = [p_1..p_B, n_1..n_M], S_ij = cos(q_i, key_j) / tau

    infonce            L = -(1/B) sum_i log softmax_j(S_ij)[i]      (in-batch + hard negatives)
    negative-sampling  L = (1/B) sum_i [-log sigma(S_ii) - sum_{j != i} log sigma(-S_ij)]

Keys that are the same text as row i's positive (`same`) are not its negatives. Logged:
`in_batch_acc`, the share of rows whose positive scores highest among the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.objectives.contrastive import in_batch_contrastive_loss, negative_sampling_loss
from lmforge.objectives.lm import LossOutput

Encode = Callable[[nn.Module, Tensor, Tensor], Tensor]  # (model, ids, mask) -> (B, d)
LOSSES = ("infonce", "negative-sampling")


@dataclass
class EmbeddingObjective:
    """(model, pair batch) -> LossOutput; `encode` pools a side into one vector per text."""

    encode: Encode
    temperature: float = 0.05
    loss: str = "infonce"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown embedding loss '{self.loss}'; use {' or '.join(LOSSES)}.")

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> LossOutput:
        q = self.encode(model, batch["input_ids"], batch["attention_mask"])
        p = self.encode(model, batch["positive_ids"], batch["positive_mask"])
        n = None
        if "negative_ids" in batch:
            n = self.encode(model, batch["negative_ids"], batch["negative_mask"])
        same = batch.get("same")
        keys = F.normalize((p if n is None else torch.cat([p, n])).float(), dim=-1)
        scores = F.normalize(q.float(), dim=-1) @ keys.T / self.temperature  # (B, B + M)
        rows = torch.arange(q.size(0), device=q.device)
        off = torch.ones_like(scores, dtype=torch.bool)
        off[rows, rows] = False
        if same is not None:
            off &= ~same.to(off.device)
        if self.loss == "infonce":
            loss = in_batch_contrastive_loss(q, p, self.temperature, negatives=n, same=same)
        else:  # masked keys score -inf, so log sigma(-S) = 0 drops them from the sum
            neg = scores.masked_fill(~off, float("-inf"))
            loss = negative_sampling_loss(scores[rows, rows], neg)
        best = scores.masked_fill(
            ~off & (rows[:, None] != torch.arange(scores.size(1), device=q.device)), -1e9
        )
        acc = (best.argmax(-1) == rows).float().mean()  # a tensor: no host sync
        return LossOutput(loss, q.size(0), {"in_batch_acc": acc})
