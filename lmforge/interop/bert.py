"""BERT (`model_type="bert"`): post-norm encoder, learned positions, token types, MLM/NSP heads.

Its traits and `config.json` keys are in the family table (`lmforge.config.families.BERT`).

Architectures and lmforge heads:

    BertForPreTraining             -> ("mlm", "nsp")   MLM transform + tied decoder, pooler + NSP
    BertForMaskedLM                -> ("mlm",)
    BertForSequenceClassification  -> ("classify",)    pooler + classifier (num_labels)
    BertForTokenClassification     -> ("tokens",)
    BertModel                      -> ()               bare encoder (sentence-transformers dirs);
                                                       its pooler is not kept
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
    linear,
    norm,
    rule,
    special_ids_to_hf,
)

PREFIX = "bert."


def config_from_hf(hf: HfConfig, fields: dict[str, Any]) -> dict[str, Any]:
    """What the family table does not map: refused variants and the number of labels."""
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(
            f"bert position_embedding_type '{position_type}' is not supported; only 'absolute' "
            "position embeddings can be converted."
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError(
            "this bert config is a decoder (is_decoder/add_cross_attention), which lmforge's "
            "bert import does not cover; convert an encoder checkpoint instead."
        )
    labels = hf.get("id2label")
    return {"num_labels": len(labels) if labels else hf.get("num_labels", 2)}


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    out: HfConfig = {"position_embedding_type": "absolute", **special_ids_to_hf(cfg)}
    if "classify" in cfg.heads or "tokens" in cfg.heads:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return out


def mismatch(cfg: ModelConfig) -> str | None:
    return None if cfg.type_vocab_size >= 1 else "type_vocab_size=0 (needs at least 1)"


def rules(cfg: ModelConfig) -> list[Rule]:
    e = f"{PREFIX}embeddings."
    out = [
        rule(f"{e}word_embeddings.weight", "embed.tok.weight"),
        rule(f"{e}position_embeddings.weight", "embed.pos.weight"),
        rule(f"{e}token_type_embeddings.weight", "embed.token_type.weight"),
        *norm(f"{e}LayerNorm", "embed.norm", cfg),
    ]
    for i in range(cfg.n_layer):
        h, o = f"{PREFIX}encoder.layer.{i}.", f"encoder.layers.{i}."
        for theirs, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            out += linear(f"{h}attention.self.{theirs}", f"{o}attn.{ours}", bias=True)
        out += linear(f"{h}attention.output.dense", f"{o}attn.o_proj", bias=True)
        out += norm(f"{h}attention.output.LayerNorm", f"{o}attn_norm", cfg)
        out += linear(f"{h}intermediate.dense", f"{o}mlp.up_proj", bias=True)
        out += linear(f"{h}output.dense", f"{o}mlp.down_proj", bias=True)
        out += norm(f"{h}output.LayerNorm", f"{o}mlp_norm", cfg)
    heads = set(cfg.heads)
    if heads & {"nsp", "classify"}:
        out += linear(f"{PREFIX}pooler.dense", "heads.pooler.dense", bias=True)
    if "mlm" in heads:
        out += linear("cls.predictions.transform.dense", "heads.mlm.dense", bias=True)
        out += norm("cls.predictions.transform.LayerNorm", "heads.mlm.norm", cfg)
        out.append(rule("cls.predictions.bias", "heads.mlm.bias"))
        if not cfg.tie_embeddings:
            out.append(rule("cls.predictions.decoder.weight", "heads.mlm.decoder.weight"))
    if "nsp" in heads:
        out += linear("cls.seq_relationship", "heads.nsp", bias=True)
    if heads & {"classify", "tokens"}:
        out += linear("classifier", "heads.classifier", bias=True)
    return out


BERT = Family(
    entry=table.BERT,
    architectures={
        "BertForPreTraining": ("mlm", "nsp"),
        "BertForMaskedLM": ("mlm",),
        "BertForSequenceClassification": ("classify",),
        "BertForTokenClassification": ("tokens",),
        "BertModel": (),
    },
    base_prefix=PREFIX,
    embedding=f"{PREFIX}embeddings.word_embeddings.weight",
    lm_weight="cls.predictions.decoder.weight",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    mismatch=mismatch,
    rules=rules,
    ignore=(
        r"embeddings\.position_ids$",  # a buffer of 0..max_len-1
        r"^cls\.predictions\.decoder\.bias$",  # an alias of cls.predictions.bias
        r"^bert\.pooler\.dense\.(weight|bias)$",  # kept only by heads that pool
    ),
)
