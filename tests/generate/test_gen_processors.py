"""Each logits processor against a plain per-row reference written here."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.generate import (
    GenerationConfig,
    frequency_penalty,
    min_p_filter,
    presence_penalty,
    process_logits,
    repetition_penalty,
    sample,
    temperature_scale,
    top_k_filter,
    top_p_filter,
)
from lmforge.generate.rows import TokenHistory
from lmforge.generate.sampling import exp_noise

NEG = -math.inf


def random_logits(seed: int, batch: int = 4, vocab: int = 12) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def ref_rows(logits, fn):
    return torch.tensor([fn(row) for row in logits.tolist()])


@pytest.mark.parametrize("seed", range(3))
def test_temperature(seed):
    x = random_logits(seed)
    torch.testing.assert_close(
        temperature_scale(x, 0.7), ref_rows(x, lambda r: [v / 0.7 for v in r])
    )
    greedy = ref_rows(x, lambda r: [v if i == r.index(max(r)) else NEG for i, v in enumerate(r)])
    assert torch.equal(temperature_scale(x, 0.0), greedy)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 3, 12, 20])
def test_top_k(seed, k):
    x = random_logits(seed)

    def ref(r):
        kth = sorted(r, reverse=True)[min(k, len(r)) - 1]
        return [v if v >= kth else NEG for v in r]

    assert torch.equal(top_k_filter(x, k), ref_rows(x, ref))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.05, 0.3, 0.75, 0.95, 1.0])
def test_top_p(seed, p):
    x = random_logits(seed)

    def ref(r):
        z = sum(math.exp(v) for v in r)
        order = sorted(range(len(r)), key=lambda i: -r[i])
        keep, mass = set(), 0.0
        for i in order:  # the smallest most-likely set whose mass reaches p
            keep.add(i)
            mass += math.exp(r[i]) / z
            if mass >= p:
                break
        return [v if i in keep else NEG for i, v in enumerate(r)]

    assert torch.equal(top_p_filter(x, p), ref_rows(x, ref))


def test_top_p_always_keeps_the_top_token():
    x = torch.tensor([[5.0, 0.0, -1.0]])
    out = top_p_filter(x, 1e-9)
    assert out[0, 0] == 5.0 and torch.isinf(out[0, 1:]).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 1.0])
def test_min_p(seed, min_p):
    x = random_logits(seed)

    def ref(r):
        z = sum(math.exp(v) for v in r)
        probs = [math.exp(v) / z for v in r]
        return [
            v if pr >= min_p * max(probs) - 1e-9 else NEG for v, pr in zip(r, probs, strict=True)
        ]

    assert torch.equal(min_p_filter(x, min_p), ref_rows(x, ref))


@pytest.mark.parametrize("penalty", [0.8, 1.0, 1.5])
def test_repetition_penalty(penalty):
    x = random_logits(0)
    seen = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.4

    def ref(i, r):
        return [
            (v / penalty if v > 0 else v * penalty) if seen[i, j] else v for j, v in enumerate(r)
        ]

    expected = torch.tensor([ref(i, r) for i, r in enumerate(x.tolist())])
    torch.testing.assert_close(repetition_penalty(x, seen, penalty), expected)


@pytest.mark.parametrize("alpha", [-0.5, 0.0, 1.2])
def test_presence_and_frequency_penalties(alpha):
    x = random_logits(2)
    counts = torch.randint(0, 3, x.shape, generator=torch.Generator().manual_seed(3)).float()
    presence = [
        [v - alpha * (c > 0) for v, c in zip(r, cr, strict=True)]
        for r, cr in zip(x.tolist(), counts.tolist(), strict=True)
    ]
    frequency = [
        [v - alpha * c for v, c in zip(r, cr, strict=True)]
        for r, cr in zip(x.tolist(), counts.tolist(), strict=True)
    ]
    torch.testing.assert_close(presence_penalty(x, counts, alpha), torch.tensor(presence))
    torch.testing.assert_close(frequency_penalty(x, counts, alpha), torch.tensor(frequency))


def test_process_logits_applies_all_in_order():
    x = random_logits(5)
    gen = GenerationConfig(
        temperature=0.5,
        top_k=6,
        top_p=0.8,
        min_p=0.05,
        repetition_penalty=1.3,
        presence_penalty=0.4,
        frequency_penalty=0.2,
    )
    history = TokenHistory([[1, 2], [3], [4, 4], [5]], 12, torch.device("cpu"))
    history.add(torch.tensor([2, 3, 7, 7]))
    history.add(torch.tensor([2, 0, 7, 1]))
    y = repetition_penalty(x, history.seen, 1.3)
    y = frequency_penalty(presence_penalty(y, history.counts, 0.4), history.counts, 0.2)
    y = min_p_filter(top_p_filter(top_k_filter(temperature_scale(y, 0.5), 6), 0.8), 0.05)
    assert torch.equal(process_logits(x, gen, history.seen, history.counts), y)
    assert history.counts[0, 2] == 2 and history.seen[0, 1] and not history.seen[0, 0]


def test_exp_noise_is_exp_1_like_torchs_exponential():
    """-log U, U ~ U[0, 1), against the Exp(1) quantiles -log(1 - q) and torch's own sampler."""
    drawn = exp_noise(400, 500, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert drawn.shape == (400, 500) and drawn.dtype == torch.float32 and (drawn > 0).all()
    reference = torch.empty(200_000).exponential_(1.0, generator=torch.Generator().manual_seed(1))
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
    exact = -torch.log1p(-q)
    torch.testing.assert_close(drawn.flatten().quantile(q), exact, rtol=0.03, atol=0.005)
    torch.testing.assert_close(reference.quantile(q), exact, rtol=0.03, atol=0.005)
    torch.testing.assert_close(drawn.mean(), torch.tensor(1.0), atol=0.01, rtol=0)


def test_sample_matches_the_distribution_and_never_draws_zeros():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0]).expand(20000, 5)
    draws = sample(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert freq[3:].sum() == 0
    torch.testing.assert_close(freq[:3], probs[0, :3], atol=0.02, rtol=0)
    again = sample(probs, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
