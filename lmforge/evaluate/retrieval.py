"""Retrieval metrics: recall@k and mean reciprocal rank (MRR).

For query q with relevant documents R_q and rank_q = the 1-based position of the first relevant
document when all documents are sorted by score (highest first; ties go to the lower index):

    recall@k = (1/|Q|) sum_q |R_q intersect top_k(q)| / |R_q|
    MRR      = (1/|Q|) sum_q 1 / rank_q

With one relevant document per query (the usual (query, positive) pairs) recall@k is the share
of queries whose positive is in the top k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rankings(scores: torch.Tensor) -> torch.Tensor:
    """(Q, N) scores -> (Q, N) document indices, best first (stable: ties keep index order)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def recall_at_k(scores: torch.Tensor, relevant: Sequence[Sequence[int]], k: int) -> float:
    """Mean over queries of |R_q in top k| / |R_q| (see the module docstring)."""
    top = rankings(scores)[:, :k].tolist()
    return sum(len(set(r) & set(t)) / len(r) for r, t in zip(relevant, top, strict=True)) / len(
        relevant
    )


def mrr(scores: torch.Tensor, relevant: Sequence[Sequence[int]]) -> float:
    """Mean over queries of 1 / (rank of the first relevant document)."""
    order = rankings(scores)
    relevant_mask = torch.zeros_like(scores, dtype=torch.bool)
    for q, docs in enumerate(relevant):
        relevant_mask[q, list(docs)] = True
    hit = relevant_mask.gather(1, order)  # (Q, N): is the document at each rank relevant
    first = hit.float().argmax(dim=-1)  # 0-based rank of the first relevant one
    return float((1.0 / (first + 1).float()).mean())


def retrieval_scores(scores: torch.Tensor, relevant: Sequence[Sequence[int]],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:  # fmt: skip
    """{"recall@1": ..., "recall@5": ..., "mrr": ...} for a (Q, N) score matrix."""
    out = {f"recall@{k}": recall_at_k(scores, relevant, k) for k in ks}
    out["mrr"] = mrr(scores, relevant)
    return out
