"""GPT-2 (`model_type="gpt2"`): learned positions, pre-norm LayerNorm, GELU MLP, tied LM head.

Two storage quirks: GPT-2's `Conv1D` keeps weights as (in, out), the transpose of `nn.Linear`;
and `c_attn` holds the query, key and value projections fused, (d, 3d) = [W_q | W_k | W_v].
"""

from __future__ import annotations

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
    norm,
    rule,
    special_ids,
    special_ids_to_hf,
)

PREFIX = "transformer."


def config_from_hf(hf: HfConfig, heads: Heads) -> dict[str, Any]:
    for knob in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(knob):
            raise CheckpointError(
                f"this gpt2 config sets {knob}=true, which lmforge cannot represent; "
                "only GPT-2 checkpoints without it can be converted."
            )
    act = hf.get("activation_function", "gelu_new")
    if act not in ACT_FROM_HF:
        raise CheckpointError(
            f"gpt2 activation_function '{act}' is not supported; "
            f"supported: {', '.join(sorted(ACT_FROM_HF))}."
        )
    vocab = hf.get("vocab_size", 50257)
    d_model = hf.get("n_embd", 768)
    return dict(
        arch="decoder",
        vocab_size=vocab,
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        d_model=d_model,
        d_ff=hf.get("n_inner") or 4 * d_model,
        max_seq_len=hf.get("n_positions", 1024),
        pos="learned",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        norm_placement="pre",
        mlp="mlp",
        activation=ACT_FROM_HF[act],
        bias=True,
        # scale_attn_weights=false means raw Q K^T scores
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("resid_pdrop", 0.1),
        attn_dropout=hf.get("attn_pdrop", 0.1),
        heads=heads,
        **special_ids(hf, vocab),
    )


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    return {
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.d_ff,
        "activation_function": ACT_TO_HF[cfg.activation],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout,
        "scale_attn_weights": cfg.attn_scale is None,
        "tie_word_embeddings": cfg.tie_embeddings,
        **special_ids_to_hf(cfg),
    }


def mismatch(cfg: ModelConfig) -> str | None:
    return differences(
        cfg,
        arch="decoder",
        pos="learned",
        norm="layernorm",
        norm_placement="pre",
        mlp="mlp",
        bias=True,
        embed_norm=False,
        final_norm=True,
        embed_scale=False,
        type_vocab_size=0,
        sliding_window=None,
        tied_logit_scale=False,
        attn_scale={None, 1.0},
        n_kv_head=cfg.n_head,
        head_dim=cfg.d_model // cfg.n_head,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [
        rule(f"{PREFIX}wte.weight", "embed.tok.weight"),
        rule(f"{PREFIX}wpe.weight", "embed.pos.weight"),
    ]
    for i in range(cfg.n_layer):
        h, o = f"{PREFIX}h.{i}.", f"decoder.layers.{i}."
        qkv = ("q_proj", "k_proj", "v_proj")
        out += norm(f"{h}ln_1", f"{o}attn_norm", cfg)
        out += [
            rule(f"{h}attn.c_attn.weight", *(f"{o}attn.{p}.weight" for p in qkv), transpose=True),
            rule(f"{h}attn.c_attn.bias", *(f"{o}attn.{p}.bias" for p in qkv)),
            rule(f"{h}attn.c_proj.weight", f"{o}attn.o_proj.weight", transpose=True),
            rule(f"{h}attn.c_proj.bias", f"{o}attn.o_proj.bias"),
        ]
        out += norm(f"{h}ln_2", f"{o}mlp_norm", cfg)
        out += [
            rule(f"{h}mlp.c_fc.weight", f"{o}mlp.up_proj.weight", transpose=True),
            rule(f"{h}mlp.c_fc.bias", f"{o}mlp.up_proj.bias"),
            rule(f"{h}mlp.c_proj.weight", f"{o}mlp.down_proj.weight", transpose=True),
            rule(f"{h}mlp.c_proj.bias", f"{o}mlp.down_proj.bias"),
        ]
    out += norm(f"{PREFIX}ln_f", "decoder.norm", cfg)
    if "lm" in cfg.heads and not cfg.tie_embeddings:
        out.append(rule("lm_head.weight", "heads.lm_head.weight"))
    return out


GPT2 = Family(
    model_type="gpt2",
    architectures={"GPT2LMHeadModel": ("lm",), "GPT2Model": ()},
    base_prefix=PREFIX,
    embedding=f"{PREFIX}wte.weight",
    lm_weight="lm_head.weight",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    mismatch=mismatch,
    rules=rules,
    # the causal-mask buffers older checkpoints stored next to the weights
    ignore=(r"\.attn\.bias$", r"\.attn\.masked_bias$"),
)
