"""`ModelConfig`: one dataclass describes every model lmforge builds.

A model family is a set of choices of this config, never a class of its own (GPT-2 = decoder +
learned positions + pre-norm LayerNorm + GELU MLP + biases; Llama = RoPE + RMSNorm + SwiGLU + GQA;
...). Each family's traits live in one table, `lmforge.config.families`, which the presets and
the Hugging Face and GGUF converters read.

`__post_init__` derives what can be derived (head size, kv heads, feed-forward width) and checks
every field with one clear sentence per mistake.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from lmforge.errors import ConfigError, did_you_mean

Arch = Literal["decoder", "encoder", "encoder-decoder"]
Positions = Literal["learned", "sinusoidal", "rope", "alibi", "relative", "none"]
Norm = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
Mlp = Literal["mlp", "glu"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
Head = Literal["lm", "mlm", "nsp", "classify", "tokens", "qa", "choice"]
RopeScaling = Literal["linear", "dynamic", "yarn", "llama3"]
ImagePositions = Literal["learned", "sincos2d"]
Fusion = Literal["early", "late", "cross", "prefix"]
FusionCombine = Literal["concat", "sum", "gated"]


#: Upper bounds on every size: far above any published model, low enough that a damaged or
#: hostile config.json (n_layer=1e9) fails here instead of building layers until memory runs out.
MAX_SIZES = {
    "vocab_size": 1 << 24,
    "n_layer": 1024,
    "n_decoder_layer": 1024,
    "n_head": 1024,
    "n_kv_head": 1024,
    "d_model": 1 << 16,
    "head_dim": 1 << 13,
    "d_ff": 1 << 20,
    "max_seq_len": 1 << 24,
    "type_vocab_size": 1 << 16,
    "num_labels": 1 << 20,
    "rel_buckets": 1 << 16,
    "sliding_window": 1 << 24,
    "image_size": 1 << 14,
    "image_channels": 1 << 10,
    "n_image_layer": 1024,
    "n_fusion_layer": 1024,
    "proj_dim": 1 << 16,
}
#: The most parameters a config may describe (about 2.2 trillion).
MAX_PARAMS = 1 << 41


@dataclass(config=ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False))
class ModelConfig:
    """Everything needed to build a model; stored as `config.json` in a checkpoint.

    Attributes:
        arch: "decoder" (GPT, Llama), "encoder" (BERT) or "encoder-decoder" (Transformer, T5).
        vocab_size: number of token ids.
        n_layer: number of blocks (of the encoder, for an encoder-decoder).
        n_decoder_layer: blocks of the decoder of an encoder-decoder (default: `n_layer`).
        n_head: attention heads.
        n_kv_head: key/value heads; `n_head` is multi-head, 1 is multi-query, between is grouped.
        d_model: width of the residual stream.
        head_dim: width of one head (default `d_model // n_head`).
        d_ff: hidden width of the feed-forward network (default 4 * d_model).
        layer_d_ff, layer_n_head, layer_n_kv_head: optional per-block sizes, one number per
            block (a structurally pruned model, `lmforge.compress`); None = `d_ff`, `n_head`,
            `n_kv_head` in every block. Encoder or decoder models only.
        max_seq_len: the longest sequence the model accepts (positions table size).
        pos: positional scheme.
        rope_theta: RoPE base.
        rope_scaling: None or one of "linear", "dynamic", "yarn", "llama3" with `rope_factor`.
        rope_factor, rope_original_max_seq_len, rope_low_freq_factor, rope_high_freq_factor,
        rope_beta_fast, rope_beta_slow, rope_attention_factor: parameters of the RoPE scalings.
        rel_buckets, rel_max_distance: T5 relative position buckets.
        norm: "layernorm" or "rmsnorm"; norm_eps its epsilon; norm_placement "pre" or "post".
        embed_norm: normalise the embeddings (BERT); final_norm: a norm after the last block.
        mlp: "mlp" = W2 act(W1 x); "glu" = W2 (act(W1 x) * W3 x) (SwiGLU with "silu").
        activation: the MLP non-linearity.
        bias: biases on attention and MLP projections.
        attn_scale: multiplier of QK^T; None means 1/sqrt(head_dim).
        embed_scale: multiply token embeddings by sqrt(d_model) (original Transformer).
        type_vocab_size: token-type (segment) embeddings, 0 for none.
        tie_embeddings: the LM head shares the token embedding matrix.
        tied_logit_scale: scale hidden states by d_model**-0.5 before a tied head (T5).
        dropout, attn_dropout: dropout rates.
        sliding_window: each query sees at most this many most recent keys (None = full).
        heads: output heads built on top of the core; () is a bare stack whose forward returns
            hidden states and logits=None (e.g. an imported BertModel or LlamaModel).
        num_labels: classes of the "classify" and "tokens" heads.
        bos_id, eos_id, pad_id, mask_id, decoder_start_id: special token ids (None if absent).
        quantization: None, or the record of `lmforge.compress.quantize_model` (method, group
            size, the swapped module names) that the loader rebuilds before loading weights.
        image_size: side in pixels of the square images of an image-and-text model (None = text
            only); image_channels: their channels; patch_size: side of the square patches that
            become image tokens ((image_size / patch_size)^2 of them, ViT style).
        image_pos: "learned" or "sincos2d" (fixed 2-D sine-cosine) positions of the patches.
        n_image_layer: blocks of the image encoder (the same `Block` as the text stacks).
        fusion: how image and text meet (see `lmforge.models.fusion`): "early" (patch and text
            tokens in one sequence), "late" (pooled image and text vectors combined),
            "cross" (text attends to image features) or "prefix" (image features projected into
            a language model's input, LLaVA style).
        fusion_combine: how late fusion combines the two vectors: "concat", "sum" or "gated".
        n_fusion_layer: cross-attention blocks of "cross" fusion on top of an encoder.
        proj_dim: width of the shared image-text embedding space of two-tower retrieval
            (default d_model).
    """

    arch: Arch = "decoder"
    vocab_size: int = 8192
    n_layer: int = 4
    n_decoder_layer: int | None = None
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 256
    head_dim: int | None = None
    d_ff: int | None = None
    layer_d_ff: list[int] | None = None
    layer_n_head: list[int] | None = None
    layer_n_kv_head: list[int] | None = None
    max_seq_len: int = 256
    pos: Positions = "learned"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_factor: float = 1.0
    rope_original_max_seq_len: int | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_attention_factor: float | None = None
    rel_buckets: int = 32
    rel_max_distance: int = 128
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"
    embed_norm: bool = False
    final_norm: bool = True
    mlp: Mlp = "mlp"
    activation: Activation = "gelu"
    bias: bool = True
    attn_scale: float | None = None
    embed_scale: bool = False
    type_vocab_size: int = 0
    tie_embeddings: bool = True
    tied_logit_scale: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    sliding_window: int | None = None
    heads: tuple[Head, ...] = ("lm",)
    num_labels: int = 2
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    decoder_start_id: int | None = None
    quantization: dict[str, Any] | None = None
    image_size: int | None = None
    image_channels: int = 1
    patch_size: int = 4
    image_pos: ImagePositions = "learned"
    n_image_layer: int = 2
    fusion: Fusion | None = None
    fusion_combine: FusionCombine = "concat"
    n_fusion_layer: int = 1
    proj_dim: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                    "choose values where it is, or set head_dim explicitly."
                )
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.arch == "encoder-decoder" and self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        self.heads = tuple(self.heads)
        if self.layer_n_head is not None and self.layer_n_kv_head is None:
            self.layer_n_kv_head = [h // self.n_kv_groups for h in self.layer_n_head]
        self._validate()
        self._validate_layers()

    def _validate(self) -> None:
        positive = ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "num_labels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name, most in MAX_SIZES.items():
            value = getattr(self, name)
            if value is not None and value > most:
                raise ConfigError(
                    f"{name}={value} is larger than lmforge allows ({most}); the config is "
                    "damaged or asks for an impossible model, fix the value."
                )
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be a small positive number, got {self.norm_eps}.")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}.")
        if self.size_estimate() > MAX_PARAMS:
            raise ConfigError(
                f"this config describes about {self.size_estimate():.3g} parameters, more than "
                f"lmforge allows ({MAX_PARAMS:.3g}); lower n_layer, d_model, d_ff or vocab_size."
            )
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ConfigError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} "
                "(n_kv_head = n_head for multi-head, 1 for multi-query attention)."
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}.")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.rope_scaling is not None and self.pos != "rope":
            raise ConfigError("rope_scaling only applies with pos='rope'; remove it or set pos.")
        if self.rope_scaling is not None and self.rope_factor < 1.0:
            raise ConfigError(f"rope_factor must be at least 1, got {self.rope_factor}.")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be at least 1, got {self.sliding_window}.")
        allowed = {
            "decoder": {"lm", "classify", "tokens", "qa", "choice"},
            "encoder": {"mlm", "nsp", "classify", "tokens", "qa", "choice"},
            "encoder-decoder": {"lm"},
        }[self.arch]
        wrong = [h for h in self.heads if h not in allowed]
        if wrong:
            raise ConfigError(
                f"head(s) {wrong} do not fit arch='{self.arch}'; choose from {sorted(allowed)}."
            )
        self._validate_image()
        ids = ("bos_id", "eos_id", "pad_id", "mask_id", "decoder_start_id")
        for name in ids:
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"{name}={value} is outside the vocabulary (vocab_size={self.vocab_size})."
                )

    def size_estimate(self) -> int:
        """An upper estimate of the parameter count, from the sizes alone (for bounds checks):
        embeddings + positions + layers * (attention + MLP) + an untied head."""
        d, hd = self.d_model, self.head_dim or self.d_model // max(self.n_head, 1)
        attn = d * hd * (2 * self.n_head + 2 * (self.n_kv_head or self.n_head))
        mlp = 3 * d * (self.d_ff or 4 * d)
        layers = self.n_layer + (self.n_decoder_layer or 0)
        positions = self.max_seq_len * d if self.pos == "learned" else 0
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + positions + layers * (2 * attn + mlp) + head

    def _validate_layers(self) -> None:
        names = ("layer_d_ff", "layer_n_head", "layer_n_kv_head")
        given = [n for n in names if getattr(self, n) is not None]
        if not given:
            return
        if self.arch == "encoder-decoder":
            raise ConfigError(
                f"{given[0]} (per-block sizes) is supported for encoder or decoder models only; "
                "remove it for an encoder-decoder."
            )
        if self.pos in ("alibi", "relative") and self.layer_n_head is not None:
            raise ConfigError(
                f"layer_n_head does not combine with pos='{self.pos}' (its biases are per head "
                "of the whole model); keep the same heads in every block."
            )
        for name in given:
            values = getattr(self, name)
            if len(values) != self.n_layer or min(values) < 1:
                raise ConfigError(
                    f"{name} must hold n_layer={self.n_layer} numbers, each at least 1, got "
                    f"{values}."
                )
        if self.layer_n_kv_head is not None:
            for i, (h, kv) in enumerate(zip(self.layer_heads, self.layer_kv_heads, strict=True)):
                if h % kv:
                    raise ConfigError(
                        f"block {i} has {h} query heads, not a multiple of its {kv} key/value "
                        "heads; fix layer_n_head / layer_n_kv_head."
                    )

    def _validate_image(self) -> None:
        if self.image_size is None:
            if self.fusion is not None:
                raise ConfigError(
                    f"fusion='{self.fusion}' needs images; set image_size (and patch_size)."
                )
            return
        for name in ("image_size", "image_channels", "patch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.n_image_tokens > 1 << 16:
            raise ConfigError(
                f"image_size={self.image_size} with patch_size={self.patch_size} makes "
                f"{self.n_image_tokens:,} image tokens, more than {1 << 16:,}; use larger patches."
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                "choose a patch size that tiles the image."
            )
        if self.n_image_layer < 0 or self.n_fusion_layer < 1:
            raise ConfigError("n_image_layer must be >= 0 and n_fusion_layer >= 1.")
        if self.proj_dim is not None and self.proj_dim < 1:
            raise ConfigError(f"proj_dim must be at least 1, got {self.proj_dim}.")
        if self.image_pos == "sincos2d" and self.d_model % 4:
            raise ConfigError(
                f"sincos2d image positions need d_model divisible by 4, got {self.d_model}."
            )

    @property
    def n_image_tokens(self) -> int:
        """Patches per image: (image_size / patch_size)^2 (0 for a text-only model)."""
        return (self.image_size // self.patch_size) ** 2 if self.image_size else 0

    # ----------------------------------------------------------------- derived properties
    @property
    def layer_ffn(self) -> list[int]:
        """The feed-forward width of each block (`layer_d_ff` or `d_ff` everywhere)."""
        return list(self.layer_d_ff) if self.layer_d_ff is not None else [self.d_ff] * self.n_layer

    @property
    def layer_heads(self) -> list[int]:
        """The query heads of each block (`layer_n_head` or `n_head` everywhere)."""
        return (
            list(self.layer_n_head)
            if self.layer_n_head is not None
            else [self.n_head] * self.n_layer
        )

    @property
    def layer_kv_heads(self) -> list[int]:
        """The key/value heads of each block (`layer_n_kv_head` or `n_kv_head` everywhere)."""
        if self.layer_n_kv_head is not None:
            return list(self.layer_n_kv_head)
        return [self.n_kv_head] * self.n_layer

    @property
    def is_uniform(self) -> bool:
        """True when every block has the same sizes (no per-block lists)."""
        return (
            self.layer_d_ff is None and self.layer_n_head is None and self.layer_n_kv_head is None
        )

    @property
    def is_causal(self) -> bool:
        """True when the (main) stack predicts left to right."""
        return self.arch != "encoder"

    @property
    def n_kv_groups(self) -> int:
        return self.n_head // self.n_kv_head

    # ----------------------------------------------------------------- construction
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["heads"] = list(self.heads)
        for name in ("layer_d_ff", "layer_n_head", "layer_n_kv_head"):
            if out[name] is None:
                del out[name]  # a uniform model's config.json stays as it was
        if out["quantization"] is None:  # only quantized checkpoints carry the key
            del out["quantization"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict; unknown keys and wrong types get one clear sentence."""
        unknown = [k for k in values if k not in _FIELDS]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"unknown model config key '{key}'{did_you_mean(key, _FIELDS)}; "
                "see `lmforge presets` for the valid keys."
            )
        if not isinstance(values, dict):
            raise ConfigError(
                f"a model config must be a mapping of keys to values, got {type(values).__name__}."
            )
        try:
            return cls(**values)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(f"model config key '{loc}': {err['msg']}.") from None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        from lmforge.config.presets import PRESETS

        if name not in PRESETS:
            raise ConfigError(
                f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; "
                f"available presets: {', '.join(sorted(PRESETS))}."
            )
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory; pass a JSON file.") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read ({e.strerror}).") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; pass a JSON file.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON ({e.msg}).") from None
        except RecursionError:
            raise ConfigError(f"config file {path} nests too deeply to be a config.") from None
        if not isinstance(values, dict):
            raise ConfigError(
                f"config file {path} holds a JSON {type(values).__name__}, not an object of "
                "model config keys; pass a model's config.json."
            )
        return cls.from_dict(values)

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        return cls.from_file(Path(path) / "config.json")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (and everything re-derived and re-validated)."""
        values = self.to_dict()
        values.update(changes)
        return ModelConfig.from_dict(values)


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
