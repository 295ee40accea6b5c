"""Losses of the image-and-text tasks (`lmforge.models.fusion.FusionModel`).

- image classification: cross-entropy of the fused representation's class logits;
- image-text retrieval: the symmetric in-batch contrastive loss of CLIP,
      L = (L_image->text + L_text->image) / 2,
  where several images of a batch may share one text (the digits have ten captions): every
  pair with the same text counts as a positive,
      L_a->b = -(1/B) sum_i log sum_{j: g_j = g_i} softmax_j(a_i . b_j / tau)
  with unit vectors a, b and group ids g. With distinct groups this is exactly the InfoNCE of
  `in_batch_contrastive_loss`;
- captioning: the causal LM cross-entropy over the caption tokens (prompt tokens ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.objectives.lm import LossOutput, scored_cross_entropy, share


def multi_positive_contrastive_loss(
    a: Tensor, b: Tensor, groups: Tensor, temperature: float = 0.07
) -> Tensor:
    """-(1/B) sum_i log sum_{j: g_j = g_i} softmax_j(a_i . b_j / tau), a and b normalised here.

    Args:
        a, b: (B, d) embeddings of the two sides of each pair.
        groups: (B,) ids; pairs with the same id are all positives of each other.
        temperature: tau > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    log_p = torch.log_softmax(a @ b.T / temperature, dim=-1)  # (B, B)
    positive = groups[:, None] == groups[None, :]
    return -torch.logsumexp(log_p.masked_fill(~positive, float("-inf")), dim=-1).mean()


@dataclass
class FusionObjective:
    """(model, batch) -> LossOutput for a FusionModel's task ("classify", "retrieve",
    "caption"); batches come from `lmforge.data.image_batches`."""

    task: str
    temperature: float = 0.07

    def __call__(self, model, batch: dict[str, Tensor]) -> LossOutput:
        out = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
        if self.task == "classify":
            y = batch["labels"]
            loss = F.cross_entropy(out.logits.float(), y)
            acc = (out.logits.argmax(-1) == y).float().mean()
            return LossOutput(loss, int(y.numel()), {"accuracy": acc})
        if self.task == "retrieve":
            g = batch["groups"]
            i2t = multi_positive_contrastive_loss(out.image_embeds, out.text_embeds, g,
                                                  self.temperature)  # fmt: skip
            t2i = multi_positive_contrastive_loss(out.text_embeds, out.image_embeds, g,
                                                  self.temperature)  # fmt: skip
            with torch.no_grad():
                sim = (
                    F.normalize(out.image_embeds.float(), dim=-1)
                    @ F.normalize(out.text_embeds.float(), dim=-1).T
                )
                hit = g[sim.argmax(-1)] == g
            return LossOutput((i2t + t2i) / 2, int(g.numel()),
                              {"batch_recall1": hit.float().mean()})  # fmt: skip
        labels = batch["labels"]  # (B, T): caption tokens, IGNORE elsewhere
        loss, n, hits = scored_cross_entropy(out.logits[:, :-1], labels[:, 1:])  # no host sync
        return LossOutput(loss, n, {"token_acc": share(hits, n)})
