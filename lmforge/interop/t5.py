"""T5 (`model_type="t5"`): encoder-decoder, relative position buckets, RMSNorm, unscaled attention.

Its traits and `config.json` keys are in the family table (`lmforge.config.families.T5`).

- T5 v1.0: `feed_forward_proj="relu"`, LM head tied to the embedding, decoder output scaled by
  d_model^-0.5 before it (lmforge: `tie_embeddings` + `tied_logit_scale`).
- T5 v1.1: `feed_forward_proj="gated-gelu"` = W_o (gelu_tanh(W_i0 x) * W_i1 x) (lmforge:
  `mlp="glu"`, `activation="gelu_tanh"`), a separate LM head and no scaling.

transformers 5 always ties the T5 head in the config and records the scaling in
`scale_decoder_outputs`; a checkpoint whose `lm_head.weight` differs from `shared.weight` is
untied (see `hf.resolve_tying`). Only the first block of each stack owns the relative bias table.
"""

from __future__ import annotations

from typing import Any

from lmforge.config import ModelConfig
from lmforge.config import families as table
from lmforge.errors import CheckpointError
from lmforge.interop.base import ACT_FROM_HF, Family, HfConfig, Rule, rule

# lmforge activation -> T5's name inside feed_forward_proj ("gated-gelu" means gelu_tanh)
_T5_ACT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}


def config_from_hf(hf: HfConfig, fields: dict[str, Any]) -> dict[str, Any]:
    """What the family table does not map: the MLP, tying, scaling, the decoder's start id."""
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    name = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and not gated) or name not in ACT_FROM_HF:
        raise CheckpointError(
            f"t5 feed_forward_proj '{proj}' is not supported; use 'relu', 'gated-gelu' or "
            f"[gated-]ACT with ACT one of {', '.join(sorted(ACT_FROM_HF))}."
        )
    tied = hf.get("tie_word_embeddings", True)
    scaled = hf.get("scale_decoder_outputs", tied)
    if scaled and not tied:
        raise CheckpointError(
            "this t5 config scales decoder outputs for an untied LM head, which lmforge cannot "
            "represent; set scale_decoder_outputs=false or tie_word_embeddings=true."
        )
    start = fields["decoder_start_id"]
    return dict(
        mlp="glu" if gated else "mlp",
        activation=ACT_FROM_HF[name],
        tie_embeddings=tied,
        tied_logit_scale=scaled,
        # T5 starts decoding from the pad token
        decoder_start_id=fields["pad_id"] if start is None else start,
    )


def _feed_forward_proj(cfg: ModelConfig) -> str:
    if cfg.mlp == "glu":
        return "gated-gelu" if cfg.activation == "gelu_tanh" else f"gated-{cfg.activation}"
    return _T5_ACT[cfg.activation]


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    # tied and scaled is T5 v1.0; anything else is written untied with an explicit lm_head
    return {
        "is_encoder_decoder": True,
        "feed_forward_proj": _feed_forward_proj(cfg),
        "tie_word_embeddings": cfg.tie_embeddings and cfg.tied_logit_scale,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
    }


def mismatch(cfg: ModelConfig) -> str | None:
    if cfg.mlp == "glu" and cfg.activation == "gelu":
        return "mlp='glu' with activation='gelu' (T5's gated-gelu is gelu_tanh)"
    return None


def _attention(theirs: str, ours: str) -> list[Rule]:
    return [rule(f"{theirs}.{p}.weight", f"{ours}.{p}_proj.weight") for p in "qkvo"]


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [rule("shared.weight", "embed.tok.weight")]
    for stack, n in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layer)):
        for i in range(n):
            h, o = f"{stack}.block.{i}.layer.", f"{stack}.layers.{i}."
            out += _attention(f"{h}0.SelfAttention", f"{o}attn")
            out.append(rule(f"{h}0.layer_norm.weight", f"{o}attn_norm.weight"))
            ff = 1
            if stack == "decoder":
                out += _attention(f"{h}1.EncDecAttention", f"{o}cross_attn")
                out.append(rule(f"{h}1.layer_norm.weight", f"{o}cross_norm.weight"))
                ff = 2
            dense = f"{h}{ff}.DenseReluDense"
            if cfg.mlp == "glu":
                out.append(rule(f"{dense}.wi_0.weight", f"{o}mlp.gate_proj.weight"))
                out.append(rule(f"{dense}.wi_1.weight", f"{o}mlp.up_proj.weight"))
            else:
                out.append(rule(f"{dense}.wi.weight", f"{o}mlp.up_proj.weight"))
            out.append(rule(f"{dense}.wo.weight", f"{o}mlp.down_proj.weight"))
            out.append(rule(f"{h}{ff}.layer_norm.weight", f"{o}mlp_norm.weight"))
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        out.append(rule(bias, f"{stack}.rel_pos.weight"))
        out.append(rule(f"{stack}.final_layer_norm.weight", f"{stack}.norm.weight"))
    if "lm" in cfg.heads and not cfg.tie_embeddings:
        out.append(rule("lm_head.weight", "heads.lm_head.weight"))
    return out


T5 = Family(
    entry=table.T5,
    architectures={"T5ForConditionalGeneration": ("lm",), "T5Model": ()},
    base_prefix="",
    embedding="shared.weight",
    lm_weight="lm_head.weight",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    mismatch=mismatch,
    rules=rules,
    ignore=(
        r"^(encoder|decoder)\.embed_tokens\.weight$",  # copies of shared.weight
        r"EncDecAttention\.relative_attention_bias\.weight$",  # unused by transformers too
    ),
)
