"""BERT (`model_type="bert"`): post-norm encoder, learned positions, token types, MLM/NSP heads.

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
    norm,
    rule,
    special_ids,
    special_ids_to_hf,
)

PREFIX = "bert."


def config_from_hf(hf: HfConfig, heads: Heads) -> dict[str, Any]:
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
    act = hf.get("hidden_act", "gelu")
    if act not in ACT_FROM_HF:
        raise CheckpointError(
            f"bert hidden_act '{act}' is not supported; supported: {', '.join(sorted(ACT_FROM_HF))}."
        )
    vocab = hf.get("vocab_size", 30522)
    labels = hf.get("id2label")
    return dict(
        arch="encoder",
        vocab_size=vocab,
        n_layer=hf.get("num_hidden_layers", 12),
        n_head=hf.get("num_attention_heads", 12),
        d_model=hf.get("hidden_size", 768),
        d_ff=hf.get("intermediate_size", 3072),
        max_seq_len=hf.get("max_position_embeddings", 512),
        pos="learned",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_placement="post",
        embed_norm=True,
        final_norm=False,
        mlp="mlp",
        activation=ACT_FROM_HF[act],
        bias=True,
        type_vocab_size=hf.get("type_vocab_size", 2),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        heads=heads,
        num_labels=len(labels) if labels else hf.get("num_labels", 2),
        **special_ids(hf, vocab),
    )


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    out: HfConfig = {
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.d_ff,
        "hidden_act": ACT_TO_HF[cfg.activation],
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings,
        **special_ids_to_hf(cfg),
    }
    if "classify" in cfg.heads or "tokens" in cfg.heads:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return out


def mismatch(cfg: ModelConfig) -> str | None:
    return differences(
        cfg,
        arch="encoder",
        pos="learned",
        norm="layernorm",
        norm_placement="post",
        embed_norm=True,
        final_norm=False,
        mlp="mlp",
        bias=True,
        embed_scale=False,
        sliding_window=None,
        attn_scale=None,
        n_kv_head=cfg.n_head,
        head_dim=cfg.d_model // cfg.n_head,
    ) or (None if cfg.type_vocab_size >= 1 else "type_vocab_size=0 (needs at least 1)")


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
    model_type="bert",
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
