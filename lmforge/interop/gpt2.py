"""GPT-2 (`model_type="gpt2"`): learned positions, pre-norm LayerNorm, GELU MLP, tied LM head.

Its traits and `config.json` keys are in the family table (`lmforge.config.families.GPT2`).

Two storage quirks: GPT-2's `Conv1D` keeps weights as (in, out), the transpose of `nn.Linear`;
and `c_attn` holds the query, key and value projections fused, (d, 3d) = [W_q | W_k | W_v].
"""

from __future__ import annotations

from typing import Any

from lmforge.config import ModelConfig
from lmforge.config import families as table
from lmforge.errors import CheckpointError
from lmforge.interop.base import (
    Family,
    HfConfig,
    Rule,
    differences,
    norm,
    rule,
    special_ids_to_hf,
)

PREFIX = "transformer."


def config_from_hf(hf: HfConfig, fields: dict[str, Any]) -> dict[str, Any]:
    """What the family table does not map: refused knobs and the attention scaling."""
    for knob in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(knob):
            raise CheckpointError(
                f"this gpt2 config sets {knob}=true, which lmforge cannot represent; "
                "only GPT-2 checkpoints without it can be converted."
            )
    # scale_attn_weights=false means raw Q K^T scores
    return {"attn_scale": None if hf.get("scale_attn_weights", True) else 1.0}


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    return {
        "embd_pdrop": cfg.dropout,
        "scale_attn_weights": cfg.attn_scale is None,
        **special_ids_to_hf(cfg),
    }


def mismatch(cfg: ModelConfig) -> str | None:
    return differences(cfg, {"attn_scale": {None, 1.0}})


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
    entry=table.GPT2,
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
