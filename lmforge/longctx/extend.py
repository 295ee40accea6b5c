"""Context extension of a RoPE model by a factor s, as a config change:

- pi   (position interpolation): theta_i / s, position p is read as p / s      -> rope_scaling="linear"
- ntk  (dynamic NTK-aware): base' = base * (s L / L0 - (s - 1))^(d/(d-2))     -> rope_scaling="dynamic"
- yarn: per-frequency blend of interpolation and extrapolation + temperature   -> rope_scaling="yarn"

The weights do not change; a short fine-tune at the new length (`lmforge extend-context`) lets the
model adapt to the rescaled positions. NTK works without fine-tuning.
"""

from __future__ import annotations

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError

METHODS = {"pi": "linear", "ntk": "dynamic", "yarn": "yarn"}


def extended_config(cfg: ModelConfig, factor: float, method: str) -> ModelConfig:
    """The config of `cfg` with its context stretched `factor` times by `method`."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}.")
    if cfg.pos != "rope":
        raise ConfigError(
            f"context extension rescales RoPE, but this model uses pos='{cfg.pos}'; "
            "use a RoPE model such as llama-mini."
        )
    if factor < 1:
        raise ConfigError(f"factor must be at least 1, got {factor}.")
    original = cfg.rope_original_max_seq_len or cfg.max_seq_len
    return cfg.replace(
        rope_scaling=METHODS[method],
        rope_factor=float(factor),
        rope_original_max_seq_len=original,
        max_seq_len=int(original * factor),
    )
