"""Logits processors: pure functions (B, V) logits -> (B, V) logits, one formula each.

A filtered-out token gets logit -inf, so softmax gives it probability 0. `process_logits` applies
them in the usual order: repetition penalty, presence and frequency penalties, temperature,
top-k, top-p, min-p.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.generate.config import GenerationConfig

_NEG_INF = float("-inf")


def temperature_scale(logits: Tensor, temperature: float) -> Tensor:
    """l / T; T = 0 keeps only the argmax (every other logit becomes -inf: greedy)."""
    if temperature == 0:
        top = logits.argmax(-1, keepdim=True)  # (B, 1)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        return logits.masked_fill(~keep, _NEG_INF)
    if temperature == 1.0:
        return logits
    return logits / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep l_i >= the k-th largest logit of its row (ties with it are kept), -inf elsewhere."""
    if k is None or k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, _NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus: keep the smallest set S of most likely tokens with sum_{i in S} p_i >= p.

    In descending order token j is dropped when the mass before it, sum_{i<j} p_i, already
    reaches p; the top token is always kept.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.float().softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # (B, V) mass of the strictly more likely tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, _NEG_INF)


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Keep p_i >= min_p * max_j p_j, i.e. l_i >= max_j l_j + ln(min_p); -inf elsewhere."""
    if min_p <= 0.0:
        return logits
    probs = logits.float().softmax(-1)
    threshold = min_p * probs.max(-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < threshold, _NEG_INF)


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL: for every seen token, l / r if l > 0 else l * r; `seen` is a (B, V) bool mask."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def presence_penalty(logits: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """OpenAI: l_j - alpha_p * 1[c_j > 0], with c_j the times token j was generated so far."""
    if alpha == 0.0:
        return logits
    return logits - alpha * (counts > 0).to(logits.dtype)


def frequency_penalty(logits: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """OpenAI: l_j - alpha_f * c_j, with c_j the times token j was generated so far."""
    if alpha == 0.0:
        return logits
    return logits - alpha * counts.to(logits.dtype)


def apply_penalties(
    logits: Tensor, gen: GenerationConfig, seen: Tensor | None, counts: Tensor | None
) -> Tensor:
    """Repetition penalty over `seen` (prompt + output), then presence/frequency over `counts`."""
    if seen is not None:
        logits = repetition_penalty(logits, seen, gen.repetition_penalty)
    if counts is not None:
        logits = presence_penalty(logits, counts, gen.presence_penalty)
        logits = frequency_penalty(logits, counts, gen.frequency_penalty)
    return logits


def process_logits(
    logits: Tensor,
    gen: GenerationConfig,
    seen: Tensor | None = None,
    counts: Tensor | None = None,
) -> Tensor:
    """All processors of `gen` in order: penalties, temperature, top-k, top-p, min-p."""
    logits = apply_penalties(logits.float(), gen, seen, counts)
    logits = temperature_scale(logits, gen.temperature)
    logits = top_k_filter(logits, gen.top_k)
    logits = top_p_filter(logits, gen.top_p)
    return min_p_filter(logits, gen.min_p)
