"""The fast paths of `lmforge.models` against the plain formulas, written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.models.attention import attention
from lmforge.models.layers import MLP, RMSNorm, rms_norm_reference
from lmforge.models.positions import (
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    relative_bucket,
    sinusoidal_table,
)

GEN = torch.Generator().manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


# ------------------------------------------------------------------ attention
def plain_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V, one head at a time, nothing fused."""
    d = q.size(-1)
    out = torch.empty_like(q)
    for b in range(q.size(0)):
        for h in range(q.size(1)):
            scores = q[b, h] @ k[b, h].T / math.sqrt(d)  # (Tq, Tk)
            if mask is not None:
                scores = scores + mask[b, h]
            out[b, h] = torch.softmax(scores, dim=-1) @ v[b, h]
    return out


def causal_mask(tq: int, tk: int) -> torch.Tensor:
    """Query i sits at position tk - tq + i and sees keys j <= that position."""
    m = torch.zeros(tq, tk)
    for i in range(tq):
        for j in range(tk):
            if j > tk - tq + i:
                m[i, j] = float("-inf")
    return m


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("tq,tk", [(6, 6), (3, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_softmax_formula(backend, tq, tk, causal):
    q, k, v = randn(2, 4, tq, 8), randn(2, 4, tk, 8), randn(2, 4, tk, 8)
    mask = causal_mask(tq, tk).expand(2, 4, tq, tk) if causal else None
    out, _ = attention(q, k, v, causal=causal, backend=backend)
    torch.testing.assert_close(out, plain_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_grouped_query_attention_shares_each_kv_head(backend):
    """H=6 query heads over H_kv=2 key/value heads: query head h uses kv head h // 3."""
    q, k, v = randn(2, 6, 5, 8), randn(2, 2, 5, 8), randn(2, 2, 5, 8)
    shared_k = torch.stack([k[:, h // 3] for h in range(6)], dim=1)
    shared_v = torch.stack([v[:, h // 3] for h in range(6)], dim=1)
    mask = causal_mask(5, 5).expand(2, 6, 5, 5)
    out, _ = attention(q, k, v, causal=True, backend=backend)
    torch.testing.assert_close(
        out, plain_attention(q, shared_k, shared_v, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_additive_padding_mask(backend):
    q, k, v = randn(2, 2, 5, 8), randn(2, 2, 5, 8), randn(2, 2, 5, 8)
    pad = torch.zeros(2, 1, 1, 5)
    pad[1, ..., 3:] = torch.finfo(torch.float32).min  # row 1: the last two keys are padding
    out, _ = attention(q, k, v, mask=pad, backend=backend)
    torch.testing.assert_close(
        out, plain_attention(q, k, v, pad.expand(2, 2, 5, 5)), atol=1e-5, rtol=1e-5
    )
    # padding keys get exactly zero weight, and the weights are a distribution
    _, w = attention(q, k, v, mask=pad, need_weights=True)
    assert (w[1, ..., 3:] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5))


# ------------------------------------------------------------------ positions
def test_rope_rotates_each_pair_by_position_times_theta():
    """(x_i, x_{i+d/2}) -> [[cos a, -sin a], [sin a, cos a]] (x_i, x_{i+d/2}), a = p * theta_i,
    theta_i = base^(-2i/d)."""
    d, base = 8, 10000.0
    cfg = ModelConfig.from_preset("llama-tiny", head_dim=d, n_head=8, rope_theta=base)
    x = randn(1, 2, 5, d)  # (B, H, T, d)
    positions = torch.tensor([[0, 1, 2, 7, 30]])
    cos, sin = RotaryEmbedding(cfg)(positions, torch.float32)
    ours = apply_rope(x, cos, sin)
    expected = torch.empty_like(x)
    for t, p in enumerate(positions[0].tolist()):
        for i in range(d // 2):
            a = p * base ** (-2 * i / d)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            pair = torch.stack([x[0, :, t, i], x[0, :, t, i + d // 2]])  # (2, H)
            new = rot @ pair
            expected[0, :, t, i], expected[0, :, t, i + d // 2] = new[0], new[1]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_equals_formula():
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d))."""
    n, d = 20, 12
    table = sinusoidal_table(n, d)
    for p in range(n):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize(
    "n_head,slopes",
    [
        (8, [2.0 ** -(h + 1) for h in range(8)]),  # 2^(-8h/n), h = 1..n
        # 6 heads: the 4-head sequence, then every other slope of the 8-head sequence
        (6, [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]),
    ],
)
def test_alibi_bias_is_minus_slope_times_distance(n_head, slopes):
    torch.testing.assert_close(alibi_slopes(n_head), torch.tensor(slopes))
    q_pos, k_pos = torch.arange(3, 7), torch.arange(7)
    bias = alibi_bias(torch.tensor(slopes), q_pos, k_pos, causal=True)
    two_way = alibi_bias(torch.tensor(slopes), q_pos, k_pos, causal=False)
    for h, m in enumerate(slopes):
        for a, i in enumerate(q_pos.tolist()):
            for j in k_pos.tolist():
                assert bias[0, h, a, j].item() == pytest.approx(-m * (i - j))
                assert two_way[0, h, a, j].item() == pytest.approx(-m * abs(i - j))


def t5_bucket(rel: int, bidirectional: bool, n_buckets: int, max_distance: int) -> int:
    """T5's bucket of key - query, from its definition, one integer at a time."""
    bucket = 0
    if bidirectional:
        n_buckets //= 2
        bucket = n_buckets if rel > 0 else 0
        rel = abs(rel)
    else:
        rel = max(-rel, 0)
    exact = n_buckets // 2
    if rel < exact:
        return bucket + rel
    log_ratio = math.log(rel / exact) / math.log(max_distance / exact)
    return bucket + min(exact + int(log_ratio * (n_buckets - exact)), n_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_follow_t5_definition(bidirectional):
    rel = torch.arange(-150, 151)
    ours = relative_bucket(rel, bidirectional, 32, 128)
    expected = [t5_bucket(r, bidirectional, 32, 128) for r in rel.tolist()]
    assert ours.tolist() == expected


# ------------------------------------------------------------------ norms and MLPs
def test_rmsnorm_equals_formula():
    """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g."""
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(randn(16))
    x = randn(3, 4, 16)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_fast_path_matches_the_reference(dtype):
    """float32 takes the fused F.rms_norm, other dtypes the float32 reference: both agree with
    `rms_norm_reference` (HF's order of operations)."""
    norm = RMSNorm(64, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(randn(64))
    x = (randn(2, 3, 64) * 7).to(dtype)
    torch.testing.assert_close(norm(x), rms_norm_reference(x, norm.weight, 1e-5))


def test_swiglu_equals_formula():
    """SwiGLU(x) = W2 (silu(W1 x) * W3 x), silu(z) = z * sigmoid(z)."""
    cfg = ModelConfig.from_preset("llama-tiny", dropout=0.0)
    mlp = MLP(cfg).eval()
    w1, w3, w2 = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    x = randn(2, 5, cfg.d_model)

    def silu(z):
        return z * torch.sigmoid(z)

    expected = F.linear(silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)
