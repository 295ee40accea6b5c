"""Llama (`model_type="llama"`): RoPE (and its scalings), RMSNorm, SwiGLU, grouped-query attention.

Its traits and `config.json` keys are in the family table (`lmforge.config.families.LLAMA`).

Hugging Face stores Llama's q/k projections in the "rotate half" layout lmforge uses (pairs
(x_i, x_{i+d/2})), so the weights map by name alone. The RoPE settings live in
`rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling` (transformers 4.x); both
are read, both are written.
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.config import ModelConfig
from lmforge.config import families as table
from lmforge.errors import CheckpointError
from lmforge.interop.base import (
    Family,
    HfConfig,
    Rule,
    linear,
    rule,
    special_ids_to_hf,
)

PREFIX = "model."
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1 * mscale * ln(s) + 1 (1 when s <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_from_hf(hf: HfConfig) -> dict[str, Any]:
    """The `rope_*` fields of `ModelConfig` from a Llama config (either transformers layout).

    - default: theta_i = base^(-2i/d)
    - linear: theta_i / s;  dynamic: base grows with the sequence past `max_position_embeddings`
    - yarn: per-frequency blend, cos/sin scaled by the attention factor
      (mscale / mscale_all_dim give factor = (0.1 m ln s + 1) / (0.1 m_all ln s + 1))
    - llama3: long wavelengths / s, short ones kept, a smooth ramp between
    """
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(
            "this llama config sets RoPE per layer type, which lmforge cannot represent; "
            "only one RoPE setting for all layers can be converted."
        )
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if partial != 1.0:
        raise CheckpointError(
            f"partial_rotary_factor={partial} is not supported; only checkpoints that rotate the "
            "whole head (partial_rotary_factor=1) can be converted."
        )
    if kind not in ROPE_TYPES:
        raise CheckpointError(
            f"rope type '{kind}' is not supported; supported rope types: {', '.join(ROPE_TYPES)}."
        )
    out: dict[str, Any] = {"rope_theta": float(theta)}
    if kind == "default":
        return out
    max_pos = hf.get("max_position_embeddings", 2048)
    # transformers gives a top-level original_max_position_embeddings priority (Phi-3 style)
    original = (
        hf.get("original_max_position_embeddings")
        or params.get("original_max_position_embeddings")
        or max_pos
    )
    factor = params.get("factor")
    if factor is None and kind == "yarn":
        factor = max_pos / original
    if factor is None:
        raise CheckpointError(f"rope type '{kind}' needs a 'factor'; add it to config.json.")
    out.update(rope_scaling=kind, rope_factor=float(factor))
    if kind in ("yarn", "llama3"):
        out["rope_original_max_seq_len"] = int(original)
    if kind == "yarn":
        if params.get("truncate", True) is False:
            raise CheckpointError(
                "yarn with truncate=false is not supported; only the default truncated "
                "correction range can be converted."
            )
        out["rope_beta_fast"] = float(params.get("beta_fast") or 32.0)
        out["rope_beta_slow"] = float(params.get("beta_slow") or 1.0)
        attention_factor = params.get("attention_factor")
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if attention_factor is None and mscale and mscale_all:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        if attention_factor is not None:
            out["rope_attention_factor"] = float(attention_factor)
    if kind == "llama3":
        out["rope_low_freq_factor"] = float(params.get("low_freq_factor", 1.0))
        out["rope_high_freq_factor"] = float(params.get("high_freq_factor", 4.0))
    return out


def rope_to_hf(cfg: ModelConfig) -> tuple[HfConfig, int]:
    """(rope_parameters, max_position_embeddings) for a Llama config."""
    kind = cfg.rope_scaling
    params: HfConfig = {"rope_type": kind or "default", "rope_theta": cfg.rope_theta}
    max_pos = cfg.max_seq_len
    original = cfg.rope_original_max_seq_len or cfg.max_seq_len
    if kind is not None:
        params["factor"] = cfg.rope_factor
    if kind == "dynamic":
        # transformers' dynamic NTK reads its original length from max_position_embeddings
        max_pos = original
    elif kind == "yarn":
        params.update(
            original_max_position_embeddings=original,
            beta_fast=cfg.rope_beta_fast,
            beta_slow=cfg.rope_beta_slow,
        )
        if cfg.rope_attention_factor is not None:
            params["attention_factor"] = cfg.rope_attention_factor
    elif kind == "llama3":
        params.update(
            original_max_position_embeddings=original,
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
        )
    return params, max_pos


def config_from_hf(hf: HfConfig, fields: dict[str, Any]) -> dict[str, Any]:
    """What the family table does not map: biases and RoPE."""
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise CheckpointError(
            "this llama config has attention_bias != mlp_bias, which lmforge cannot represent; "
            "only checkpoints with biases on both or on neither can be converted."
        )
    return dict(bias=bool(hf.get("attention_bias", False)), **rope_from_hf(hf))


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    rope, max_pos = rope_to_hf(cfg)
    legacy = (
        None if cfg.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"}
    )
    return {
        "max_position_embeddings": max_pos,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        # transformers >= 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": legacy,
        **special_ids_to_hf(cfg),
    }


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [rule(f"{PREFIX}embed_tokens.weight", "embed.tok.weight")]
    for i in range(cfg.n_layer):
        h, o = f"{PREFIX}layers.{i}.", f"decoder.layers.{i}."
        out.append(rule(f"{h}input_layernorm.weight", f"{o}attn_norm.weight"))
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out += linear(f"{h}self_attn.{p}", f"{o}attn.{p}", cfg.bias)
        out.append(rule(f"{h}post_attention_layernorm.weight", f"{o}mlp_norm.weight"))
        for p in ("gate_proj", "up_proj", "down_proj"):
            out += linear(f"{h}mlp.{p}", f"{o}mlp.{p}", cfg.bias)
    out.append(rule(f"{PREFIX}norm.weight", "decoder.norm.weight"))
    if "lm" in cfg.heads and not cfg.tie_embeddings:
        out.append(rule("lm_head.weight", "heads.lm_head.weight"))
    return out


LLAMA = Family(
    entry=table.LLAMA,
    architectures={"LlamaForCausalLM": ("lm",), "LlamaModel": ()},
    base_prefix=PREFIX,
    embedding=f"{PREFIX}embed_tokens.weight",
    lm_weight="lm_head.weight",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    rules=rules,
    ignore=(r"rotary_emb\.inv_freq$",),
)
