"""Llama (`model_type="llama"`): RoPE (and its scalings), RMSNorm, SwiGLU, grouped-query attention.

Hugging Face stores Llama's q/k projections in the "rotate half" layout lmforge uses (pairs
(x_i, x_{i+d/2})), so the weights map by name alone. The RoPE settings live in
`rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling` (transformers 4.x); both
are read, both are written.
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.interop.base import (
    ACT_FROM_HF,
    ACT_TO_HF,
    Family,
    Heads,
    HfConfig,
    Rule,
    differences,
    linear,
    rule,
    special_ids,
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


def config_from_hf(hf: HfConfig, heads: Heads) -> dict[str, Any]:
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise CheckpointError(
            "this llama config has attention_bias != mlp_bias, which lmforge cannot represent; "
            "only checkpoints with biases on both or on neither can be converted."
        )
    act = hf.get("hidden_act", "silu")
    if act not in ACT_FROM_HF:
        raise CheckpointError(
            f"llama hidden_act '{act}' is not supported; supported: {', '.join(sorted(ACT_FROM_HF))}."
        )
    vocab = hf.get("vocab_size", 32000)
    d_model = hf.get("hidden_size", 4096)
    n_head = hf.get("num_attention_heads", 32)
    return dict(
        arch="decoder",
        vocab_size=vocab,
        n_layer=hf.get("num_hidden_layers", 32),
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_model=d_model,
        head_dim=hf.get("head_dim") or d_model // n_head,
        d_ff=hf.get("intermediate_size", 11008),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        pos="rope",
        **rope_from_hf(hf),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_placement="pre",
        mlp="glu",
        activation=ACT_FROM_HF[act],
        bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dropout=0.0,
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        heads=heads,
        **special_ids(hf, vocab),
    )


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    rope, max_pos = rope_to_hf(cfg)
    legacy = (
        None if cfg.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"}
    )
    return {
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": ACT_TO_HF[cfg.activation],
        "max_position_embeddings": max_pos,
        "rms_norm_eps": cfg.norm_eps,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attn_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        # transformers >= 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": legacy,
        **special_ids_to_hf(cfg),
    }


def mismatch(cfg: ModelConfig) -> str | None:
    return differences(
        cfg,
        arch="decoder",
        pos="rope",
        norm="rmsnorm",
        norm_placement="pre",
        mlp="glu",
        embed_norm=False,
        final_norm=True,
        embed_scale=False,
        type_vocab_size=0,
        sliding_window=None,
        tied_logit_scale=False,
        attn_scale=None,
    )


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
    model_type="llama",
    architectures={"LlamaForCausalLM": ("lm",), "LlamaModel": ()},
    base_prefix=PREFIX,
    embedding=f"{PREFIX}embed_tokens.weight",
    lm_weight="lm_head.weight",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    mismatch=mismatch,
    rules=rules,
    ignore=(r"rotary_emb\.inv_freq$",),
)
