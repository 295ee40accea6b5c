"""`ModelConfig`: one dataclass describes every model lmforge builds.

A model family is a preset of this config, never a class of its own:

- GPT-2 = decoder + learned positions + LayerNorm (pre-norm) + GELU MLP + tied LM head + biases;
- Llama = decoder + RoPE + RMSNorm + SwiGLU (`mlp="glu"`, `activation="silu"`) + grouped-query
  attention + no biases;
- BERT = encoder + learned positions + token types + post-norm + embedding LayerNorm + MLM/NSP heads;
- the original Transformer = encoder-decoder + sinusoidal positions + post-norm;
- T5 = encoder-decoder + relative position bias + RMSNorm (pre-norm) + unscaled attention.

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
Head = Literal["lm", "mlm", "nsp", "classify", "tokens"]
RopeScaling = Literal["linear", "dynamic", "yarn", "llama3"]
ImagePositions = Literal["learned", "sincos2d"]
Fusion = Literal["early", "late", "cross", "prefix"]
FusionCombine = Literal["concat", "sum", "gated"]


@dataclass(config=ConfigDict(extra="forbid", validate_assignment=False))
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
        self._validate()

    def _validate(self) -> None:
        positive = ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "num_labels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
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
            "decoder": {"lm", "classify", "tokens"},
            "encoder": {"mlm", "nsp", "classify", "tokens"},
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
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON ({e.msg}).") from None
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
