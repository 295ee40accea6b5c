"""The traits of each model family, in one table that presets, Hugging Face import/export and
GGUF import/export all read.

A family is a set of `ModelConfig` choices, never a class. Each entry holds:

- `traits`: the choices every model of the family makes (GPT-2: learned positions, pre-norm
  LayerNorm, biases, ...). An import sets them; an export checks them, and a config that differs
  in one has no equivalent in that family's formats.
- `preset`: the choices lmforge's presets make where the family's checkpoints vary (the norm's
  epsilon, the activation, a tied head, dropout, the heads).
- `hf`: how the family's Hugging Face `config.json` stores `ModelConfig` fields: field -> the
  key and the value transformers assumes when the key is absent (its config class's default).
- `gguf`: the same for GGUF metadata (`{arch}.{key}`), the choices the GGUF architecture fixes
  beyond the traits, and the tensor names (llama.cpp's `blk.N.attn_q` ...).

A field a format does not store must keep the value `ModelConfig` derives for it
(`derived_fields`): a GPT-2 config has no key for grouped-query heads, so an exported model
must have `n_kv_head == n_head`.

    family    traits                                               Hugging Face  GGUF
    gpt2      decoder, learned pos, LayerNorm pre, GELU MLP, bias  gpt2          gpt2
    llama     decoder, RoPE, RMSNorm pre, GLU (SwiGLU), GQA        llama         llama
    bert      encoder, learned pos, LayerNorm post, token types    bert          -
    t5        encoder-decoder, relative buckets, RMSNorm pre       t5            -
    transformer  encoder-decoder, sinusoidal, LayerNorm post       -             -
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lmforge.config.model import ModelConfig


@dataclass(frozen=True)
class Key:
    """A `ModelConfig` field as another format stores it.

    Attributes:
        name: the key in that format (for GGUF without the `{arch}.` prefix).
        default: what that format assumes when the key is absent or null; None means
            `ModelConfig` derives the value (e.g. `n_kv_head = n_head`).
        kind: how GGUF stores it ("int": uint32, "float": float32); unused for Hugging Face.
        required: an import refuses a file without it.
    """

    name: str
    default: Any = None
    kind: Literal["int", "float"] = "int"
    required: bool = False


@dataclass(frozen=True)
class HfFormat:
    """A family's Hugging Face `config.json`.

    Attributes:
        model_type: its `model_type`.
        fields: `ModelConfig` field -> key, for the fields stored as they are (sizes, epsilon,
            dropout, ...); fields that need a translation (activation names, RoPE scaling) are
            mapped by the family's module in `lmforge.interop`.
        activation: the key naming the activation in transformers' words ("gelu_new"), or
            None when the family names it its own way (T5's `feed_forward_proj`).
        implied: fields the format does not store, with the value an import gives them.
    """

    model_type: str
    fields: dict[str, Key]
    activation: Key | None = None
    implied: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GgufFormat:
    """A family's GGUF architecture (llama.cpp's names).

    Attributes:
        arch: `general.architecture`, also the prefix of its metadata keys.
        fields: (`ModelConfig` field, key) pairs; one field may be stored under several keys
            (llama's head size is `attention.key_length`, `attention.value_length` and
            `rope.dimension_count`), which must then agree.
        fixed: choices the architecture fixes beyond the family's traits (a value, or a set of
            the values it accepts); an import sets the values, an export checks them.
        implied: fields GGUF does not store, with the value an import gives them.
        tensors: GGUF tensor name -> lmforge module, outside the blocks.
        block_tensors: GGUF name inside `blk.N` -> lmforge module inside `decoder.layers.N`;
            a tuple of modules when GGUF fuses them (GPT-2's `attn_qkv` = rows of q, k, v).
    """

    arch: str
    fields: tuple[tuple[str, Key], ...]
    fixed: dict[str, Any]
    implied: dict[str, Any]
    tensors: dict[str, str]
    block_tensors: dict[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class Family:
    """One model family: its traits, the presets' further choices, and its file formats."""

    name: str
    traits: dict[str, Any]
    preset: dict[str, Any]
    hf: HfFormat | None = None
    gguf: GgufFormat | None = None

    def preset_fields(self) -> dict[str, Any]:
        """The `ModelConfig` fields every preset of the family starts from."""
        return {**self.traits, **self.preset}


def derived_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The values `ModelConfig` derives for the fields a format may not store."""
    return {"n_kv_head": cfg.n_head, "head_dim": cfg.d_model // cfg.n_head}


def differences(cfg: ModelConfig, expected: dict[str, Any]) -> str | None:
    """'field=value (needs X)' for the first field of `cfg` that differs from `expected`
    (a set in `expected` accepts any of its values); None when all agree."""
    for name, want in expected.items():
        have = getattr(cfg, name)
        ok = have in want if isinstance(want, (set, frozenset)) else have == want
        if not ok:
            want_text = (
                " or ".join(repr(w) for w in sorted(want, key=repr))
                if isinstance(want, (set, frozenset))
                else repr(want)
            )
            return f"{name}={have!r} (needs {want_text})"
    return None


def unstored(cfg: ModelConfig, stored: set[str]) -> dict[str, Any]:
    """The derived value of each field in `derived_fields` that a format does not store."""
    return {k: v for k, v in derived_fields(cfg).items() if k not in stored}


# ------------------------------------------------------------------ the table
_DECODER_ONLY = dict(
    arch="decoder",
    norm_placement="pre",
    embed_norm=False,
    final_norm=True,
    embed_scale=False,
    type_vocab_size=0,
    sliding_window=None,
    tied_logit_scale=False,
)

GPT2 = Family(
    name="gpt2",
    traits=dict(
        _DECODER_ONLY,
        pos="learned",
        norm="layernorm",
        mlp="mlp",
        bias=True,
    ),
    preset=dict(norm_eps=1e-5, activation="gelu_tanh", tie_embeddings=True, heads=("lm",)),
    hf=HfFormat(
        model_type="gpt2",
        fields={
            "vocab_size": Key("vocab_size", 50257),
            "n_layer": Key("n_layer", 12),
            "n_head": Key("n_head", 12),
            "d_model": Key("n_embd", 768),
            "d_ff": Key("n_inner"),
            "max_seq_len": Key("n_positions", 1024),
            "norm_eps": Key("layer_norm_epsilon", 1e-5),
            "tie_embeddings": Key("tie_word_embeddings", True),
            "dropout": Key("resid_pdrop", 0.1),
            "attn_dropout": Key("attn_pdrop", 0.1),
        },
        activation=Key("activation_function", "gelu_new"),
    ),
    gguf=GgufFormat(
        arch="gpt2",
        fields=(
            ("max_seq_len", Key("context_length", required=True)),
            ("d_model", Key("embedding_length", required=True)),
            ("n_layer", Key("block_count", required=True)),
            ("d_ff", Key("feed_forward_length", required=True)),
            ("n_head", Key("attention.head_count", required=True)),
            ("norm_eps", Key("attention.layer_norm_epsilon", 1e-5, kind="float")),
        ),
        # llama.cpp's gpt2 graph: GELU (tanh form) and the output reusing token_embd
        fixed=dict(activation=frozenset({"gelu_tanh", "gelu"}), tie_embeddings=True),
        implied=dict(dropout=0.0, attn_dropout=0.0, heads=("lm",)),
        tensors={
            "token_embd": "embed.tok",
            "position_embd": "embed.pos",
            "output_norm": "decoder.norm",
        },
        block_tensors={
            "attn_norm": "attn_norm",
            "attn_qkv": ("attn.q_proj", "attn.k_proj", "attn.v_proj"),
            "attn_output": "attn.o_proj",
            "ffn_norm": "mlp_norm",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        },
    ),
)

LLAMA = Family(
    name="llama",
    traits=dict(
        _DECODER_ONLY,
        pos="rope",
        norm="rmsnorm",
        mlp="glu",
        attn_scale=None,
    ),
    preset=dict(
        rope_theta=10000.0,
        norm_eps=1e-5,
        activation="silu",
        bias=False,
        tie_embeddings=False,
        heads=("lm",),
    ),
    hf=HfFormat(
        model_type="llama",
        fields={
            "vocab_size": Key("vocab_size", 32000),
            "n_layer": Key("num_hidden_layers", 32),
            "n_head": Key("num_attention_heads", 32),
            "n_kv_head": Key("num_key_value_heads"),
            "d_model": Key("hidden_size", 4096),
            "head_dim": Key("head_dim"),
            "d_ff": Key("intermediate_size", 11008),
            "max_seq_len": Key("max_position_embeddings", 2048),
            "norm_eps": Key("rms_norm_eps", 1e-6),
            "tie_embeddings": Key("tie_word_embeddings", False),
            "attn_dropout": Key("attention_dropout", 0.0),
        },
        activation=Key("hidden_act", "silu"),
        implied=dict(dropout=0.0),
    ),
    gguf=GgufFormat(
        arch="llama",
        fields=(
            ("max_seq_len", Key("context_length", 2048)),
            ("d_model", Key("embedding_length", required=True)),
            ("n_layer", Key("block_count", required=True)),
            ("d_ff", Key("feed_forward_length", required=True)),
            ("n_head", Key("attention.head_count", required=True)),
            ("n_kv_head", Key("attention.head_count_kv")),
            ("head_dim", Key("attention.key_length")),
            ("head_dim", Key("attention.value_length")),
            ("head_dim", Key("rope.dimension_count")),
            ("rope_theta", Key("rope.freq_base", 10000.0, kind="float")),
            ("norm_eps", Key("attention.layer_norm_rms_epsilon", 1e-5, kind="float")),
            ("vocab_size", Key("vocab_size")),
        ),
        fixed=dict(activation="silu"),
        implied=dict(dropout=0.0, attn_dropout=0.0, heads=("lm",)),
        tensors={
            "token_embd": "embed.tok",
            "output_norm": "decoder.norm",
            "output": "heads.lm_head",
        },
        block_tensors={
            "attn_norm": "attn_norm",
            "attn_q": "attn.q_proj",
            "attn_k": "attn.k_proj",
            "attn_v": "attn.v_proj",
            "attn_output": "attn.o_proj",
            "ffn_norm": "mlp_norm",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        },
    ),
)

BERT = Family(
    name="bert",
    traits=dict(
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
    ),
    preset=dict(
        norm_eps=1e-12,
        activation="gelu",
        type_vocab_size=2,
        tie_embeddings=True,
        dropout=0.1,
        attn_dropout=0.1,
        heads=("mlm", "nsp"),
    ),
    hf=HfFormat(
        model_type="bert",
        fields={
            "vocab_size": Key("vocab_size", 30522),
            "n_layer": Key("num_hidden_layers", 12),
            "n_head": Key("num_attention_heads", 12),
            "d_model": Key("hidden_size", 768),
            "d_ff": Key("intermediate_size", 3072),
            "max_seq_len": Key("max_position_embeddings", 512),
            "type_vocab_size": Key("type_vocab_size", 2),
            "norm_eps": Key("layer_norm_eps", 1e-12),
            "tie_embeddings": Key("tie_word_embeddings", True),
            "dropout": Key("hidden_dropout_prob", 0.1),
            "attn_dropout": Key("attention_probs_dropout_prob", 0.1),
        },
        activation=Key("hidden_act", "gelu"),
    ),
)

T5 = Family(
    name="t5",
    traits=dict(
        arch="encoder-decoder",
        pos="relative",
        norm="rmsnorm",
        norm_placement="pre",
        embed_norm=False,
        final_norm=True,
        embed_scale=False,
        bias=False,
        attn_scale=1.0,
        type_vocab_size=0,
        sliding_window=None,
    ),
    preset=dict(
        norm_eps=1e-6,
        mlp="mlp",
        activation="relu",
        tie_embeddings=True,
        tied_logit_scale=True,
        dropout=0.1,
        heads=("lm",),
    ),
    hf=HfFormat(
        model_type="t5",
        fields={
            "vocab_size": Key("vocab_size", 32128),
            "n_layer": Key("num_layers", 6),
            "n_decoder_layer": Key("num_decoder_layers"),
            "n_head": Key("num_heads", 8),
            "d_model": Key("d_model", 512),
            "head_dim": Key("d_kv", 64),
            "d_ff": Key("d_ff", 2048),
            "max_seq_len": Key("n_positions", 512),
            "rel_buckets": Key("relative_attention_num_buckets", 32),
            "rel_max_distance": Key("relative_attention_max_distance", 128),
            "norm_eps": Key("layer_norm_epsilon", 1e-6),
            "dropout": Key("dropout_rate", 0.1),
            "attn_dropout": Key("dropout_rate", 0.1),
        },
    ),
)

TRANSFORMER = Family(
    name="transformer",
    traits=dict(
        arch="encoder-decoder",
        pos="sinusoidal",
        norm="layernorm",
        norm_placement="post",
        final_norm=False,
        mlp="mlp",
        bias=True,
        embed_scale=True,
    ),
    preset=dict(
        norm_eps=1e-5,
        activation="relu",
        tie_embeddings=True,
        dropout=0.1,
        heads=("lm",),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (GPT2, LLAMA, BERT, T5, TRANSFORMER)}
"""Every family by name (the Hugging Face `model_type` where it has one)."""
