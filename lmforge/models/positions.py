"""Positional encodings: sinusoidal, RoPE (and its scalings), ALiBi and T5 relative buckets.

Learned absolute positions are a plain `nn.Embedding` in `embeddings.py`; everything else that
tells attention where a token sits lives here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig


# --------------------------------------------------------------------------- sinusoidal
def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    Returns:
        (n_pos, dim) float32 table; even columns hold sines, odd columns cosines.
    """
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]  # (n_pos, 1)
    i2 = torch.arange(0, dim, 2, dtype=torch.float64)  # (dim/2,) the 2i of the formula
    angle = pos / torch.pow(10000.0, i2 / dim)  # (n_pos, dim/2)
    table = torch.zeros(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float()


# --------------------------------------------------------------------------- RoPE
def rope_inv_freq(cfg: ModelConfig, seq_len: int | None = None) -> tuple[Tensor, float]:
    """Rotation frequencies theta_i = base^(-2i/d) for i < d/2, after the configured scaling.

    - none: theta_i = base^(-2i/d)
    - linear (position interpolation): theta_i / s, i.e. position p is read as p / s
    - dynamic (NTK): base' = base * (s * L / L0 - (s - 1))^(d / (d - 2)) once L > L0
    - yarn: per-frequency blend of interpolation and extrapolation by wavelength, with the
      attention temperature 0.1 ln(s) + 1 applied to cos/sin
    - llama3: long wavelengths divided by s, short ones kept, a smooth ramp between

    Args:
        cfg: the model config (head_dim, rope_theta, rope_scaling and its parameters).
        seq_len: the sequence length seen (only "dynamic" uses it).

    Returns:
        (inv_freq of shape (head_dim/2,) float32, attention factor multiplying cos and sin).
    """
    dim = cfg.head_dim
    base = cfg.rope_theta
    factor = cfg.rope_factor
    original = cfg.rope_original_max_seq_len or cfg.max_seq_len
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # 2i/d
    kind = cfg.rope_scaling
    attention_factor = 1.0
    if kind == "dynamic" and seq_len is not None and seq_len > original:
        base = base * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base**exponents)
    if kind == "linear":
        inv_freq = inv_freq / factor
    elif kind == "yarn":
        inv_freq, attention_factor = _yarn(cfg, exponents, original)
    elif kind == "llama3":
        inv_freq = _llama3(cfg, inv_freq, original)
    return inv_freq, attention_factor


def _yarn(cfg: ModelConfig, exponents: Tensor, original: int) -> tuple[Tensor, float]:
    dim, base, factor = cfg.head_dim, cfg.rope_theta, cfg.rope_factor
    attention_factor = cfg.rope_attention_factor
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(n_rot: float) -> float:
        # the dimension index whose wavelength makes n_rot turns over the original context
        return (dim * math.log(original / (n_rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.rope_beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base**exponents
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    keep = 1.0 - ramp  # 1 = keep the original frequency (high-frequency dims)
    return interpolation * (1 - keep) + extrapolation * keep, attention_factor


def _llama3(cfg: ModelConfig, inv_freq: Tensor, original: int) -> Tensor:
    factor, low_ff, high_ff = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    low_wavelen = original / low_ff
    high_wavelen = original / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Produces (cos, sin) of shape (B, T, head_dim) for given positions.

    The rotation pairs dimension i with i + d/2 ("rotate half" layout, as Hugging Face stores
    Llama weights), so checkpoint import is a rename.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        inv_freq, self.attention_factor = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        inv_freq, factor = self.inv_freq, self.attention_factor
        if self.cfg.rope_scaling == "dynamic":
            seq_len = int(position_ids.max()) + 1
            inv_freq, factor = rope_inv_freq(self.cfg, seq_len)
            inv_freq = inv_freq.to(position_ids.device)
        # (B, T, d/2): angle = position * theta_i, in float32 for accuracy at long positions
        freqs = position_ids[..., None].float() * inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, d)
        return (emb.cos() * factor).to(dtype), (emb.sin() * factor).to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by the angle p * theta_i.

    x' = x * cos + rotate_half(x) * sin, with x of shape (B, H, T, d) and cos/sin (B, T, d), or
    (B, 1, T, d) already broadcast over the heads (what a decode step passes to every layer).
    """
    if cos.dim() < x.dim():
        cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------- ALiBi
def alibi_slopes(n_head: int) -> Tensor:
    """Per-head slopes m_h: the geometric sequence 2^(-8h/n) (n a power of two), interleaved
    with the next power of two's sequence otherwise."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_two(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    extra = power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(power_of_two(closest) + extra)


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor, causal: bool) -> Tensor:
    """bias[h, i, j] = -m_h * (i - j)  (|i - j| when bidirectional).

    Args:
        slopes: (H,) slopes; q_pos: (Tq,) query positions; k_pos: (Tk,) key positions.

    Returns:
        (1, H, Tq, Tk) additive attention bias.
    """
    dist = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
    if not causal:
        dist = dist.abs()
    return (-slopes.float()[:, None, None] * dist)[None]


# --------------------------------------------------------------------------- T5 relative
def relative_bucket(rel: Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> Tensor:
    """T5's bucket of a relative position (key - query): exact buckets for small distances,
    logarithmically wider buckets up to `max_distance`, half the buckets per direction when
    bidirectional."""
    bucket = torch.zeros_like(rel)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (rel > 0).long() * n_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = n_buckets // 2
    is_small = rel < max_exact
    large = (
        max_exact
        + (
            torch.log(rel.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (n_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=n_buckets - 1)
    return bucket + torch.where(is_small, rel, large)


class RelativePositionBias(nn.Module):
    """A learned scalar bias per (bucket, head) added to attention scores (T5)."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets = cfg.rel_buckets
        self.max_distance = cfg.rel_max_distance
        self.weight = nn.Parameter(torch.zeros(cfg.rel_buckets, cfg.n_head))

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(Tq,), (Tk,) positions -> (1, H, Tq, Tk) bias."""
        rel = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk)
        buckets = relative_bucket(rel, self.bidirectional, self.n_buckets, self.max_distance)
        return self.weight[buckets].permute(2, 0, 1)[None]  # (1, H, Tq, Tk)
