"""Negative sampling and InfoNCE against their formulas written out element by element."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.objectives.contrastive import in_batch_contrastive_loss, negative_sampling_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_negative_sampling_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(5, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    expected = (
        sum(
            -math.log(_sigmoid(float(pos[i]))) - sum(math.log(_sigmoid(-float(s))) for s in neg[i])
            for i in range(5)
        )
        / 5
    )
    assert negative_sampling_loss(pos, neg).item() == pytest.approx(expected, rel=1e-5)


def test_negative_sampling_is_stable_for_large_scores():
    loss = negative_sampling_loss(torch.tensor([200.0]), torch.tensor([[-200.0, -150.0]]))
    assert torch.isfinite(loss) and loss.item() < 1e-6


def test_in_batch_contrastive_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    a, b, tau = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), 0.1
    ua = [[float(x) for x in row / row.norm()] for row in a]
    ub = [[float(x) for x in row / row.norm()] for row in b]
    total = 0.0
    for i in range(4):
        s = [sum(x * y for x, y in zip(ua[i], ub[j], strict=True)) / tau for j in range(4)]
        total += -(s[i] - math.log(sum(math.exp(v) for v in s)))
    assert in_batch_contrastive_loss(a, b, tau).item() == pytest.approx(total / 4, rel=1e-5)


def test_contrastive_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="neg"):
        negative_sampling_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        in_batch_contrastive_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


def test_in_batch_contrastive_with_hard_negatives_and_duplicates_matches_the_formula():
    g = torch.Generator().manual_seed(2)
    a, b, n, tau = (torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g),
                    torch.randn(2, 6, generator=g), 0.2)  # fmt: skip
    same = torch.zeros(3, 5, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # rows 0 and 1 share a positive: not each other's negative
    unit = lambda t: [[float(x) for x in row / row.norm()] for row in t]  # noqa: E731
    ua, keys = unit(a), unit(b) + unit(n)
    total = 0.0
    for i in range(3):
        s = {j: sum(x * y for x, y in zip(ua[i], keys[j], strict=True)) / tau
             for j in range(5) if j == i or not same[i, j]}  # fmt: skip
        total += -(s[i] - math.log(sum(math.exp(v) for v in s.values())))
    loss = in_batch_contrastive_loss(a, b, tau, negatives=n, same=same)
    assert loss.item() == pytest.approx(total / 3, rel=1e-5)
