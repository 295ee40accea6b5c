"""recall@k and MRR against their formulas, and the embedding objective on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.evaluate.retrieval import mrr, recall_at_k, retrieval_scores
from lmforge.objectives.contrastive import in_batch_contrastive_loss, negative_sampling_loss
from lmforge.objectives.embedding import EmbeddingObjective


def _plain(scores: list[list[float]], relevant: list[list[int]], k: int) -> tuple[float, float]:
    recall, rr = 0.0, 0.0
    for row, rel in zip(scores, relevant, strict=True):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        recall += len(set(order[:k]) & set(rel)) / len(rel)
        rr += 1 / (1 + min(order.index(j) for j in rel))
    return recall / len(scores), rr / len(scores)


def test_recall_and_mrr_match_the_formulas():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, 15, generator=g)
    scores[3, 4] = scores[3, 5]  # a tie: the lower index ranks first
    relevant = [[int(torch.randint(15, (1,), generator=g))] for _ in range(18)] + [[1, 2], [4, 5]]
    for k in (1, 3, 5):
        expected_recall, expected_mrr = _plain(scores.tolist(), relevant, k)
        assert recall_at_k(scores, relevant, k) == pytest.approx(expected_recall)
        assert mrr(scores, relevant) == pytest.approx(expected_mrr)
    perfect = retrieval_scores(torch.eye(4), [[i] for i in range(4)], ks=(1,))
    assert perfect == {"recall@1": 1.0, "mrr": 1.0}


def _identity(model, ids, mask):  # the "model" is the batch itself: ids are vectors
    return ids.float()


def test_embedding_objective_is_infonce_or_negative_sampling_of_the_pooled_vectors():
    g = torch.Generator().manual_seed(1)
    q, p, n = (torch.randn(3, 5, generator=g) for _ in range(3))
    same = torch.zeros(3, 6, dtype=torch.bool)
    same[0, 2] = True
    batch = {"input_ids": q, "attention_mask": None, "positive_ids": p, "positive_mask": None,
             "negative_ids": n, "negative_mask": None, "same": same}  # fmt: skip
    out = EmbeddingObjective(_identity, temperature=0.1)(None, batch)
    torch.testing.assert_close(out.loss, in_batch_contrastive_loss(q, p, 0.1, n, same))
    assert out.n_tokens == 3 and 0.0 <= out.metrics["in_batch_acc"] <= 1.0

    out = EmbeddingObjective(_identity, 0.1, "negative-sampling")(None, batch)
    unit = lambda t: torch.nn.functional.normalize(t, dim=-1)  # noqa: E731
    s = unit(q) @ unit(torch.cat([p, n])).T / 0.1
    total = 0.0
    for i in range(3):
        negs = [s[i, j] for j in range(6) if j != i and not same[i, j]]
        total += -math.log(torch.sigmoid(s[i, i])) - sum(math.log(torch.sigmoid(-x)) for x in negs)
    assert out.loss.item() == pytest.approx(total / 3, rel=1e-5)
    assert negative_sampling_loss is not None
    with pytest.raises(ValueError, match="unknown embedding loss"):
        EmbeddingObjective(_identity, 0.1, "triplet")
