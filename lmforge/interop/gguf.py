"""Import Llama-architecture GGUF files (llama.cpp, Ollama) into lmforge model dirs.

    import_gguf(file, out)   read_gguf -> config_from_gguf -> state_from_gguf (dequantize,
                             undo the RoPE row permutation) -> save_weights + tokenizer

Metadata `llama.*` maps onto `ModelConfig`; tensors are renamed (`blk.N.attn_q.weight` ->
`decoder.layers.N.attn.q_proj.weight`, ...), `output.weight` absent means a tied LM head.

llama.cpp rotates interleaved pairs (x_{2i}, x_{2i+1}); Hugging Face and lmforge rotate halves
(x_i, x_{i+d/2}). Its converter therefore reorders the rows of W_q and W_k inside every head:
GGUF row 2i + s of a head is Hugging Face row s * d/2 + i (s in {0, 1}, i < d/2).
`unpermute_rope` undoes it; `permute_rope` is its inverse (the converter's direction).

Llama 3.x files keep their RoPE scaling as a `rope_freqs` tensor of per-frequency divisors
f_i (theta_i' = theta_i / f_i) rather than as metadata; `llama3_from_rope_freqs` recovers the
`llama3` scaling parameters from it and checks that they reproduce every f_i.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.interop.gguf_file import GGUFFile, meta_float, meta_int, meta_str, read_gguf
from lmforge.interop.gguf_vocab import tokenizer_from_gguf
from lmforge.interop.hf import expected_shapes
from lmforge.models.io import check_finite, save_weights

SUPPORTED_GGUF_ARCHITECTURES: tuple[str, ...] = ("llama",)
ROPE_FREQS = "rope_freqs.weight"
# GGUF name inside block N -> lmforge name inside decoder.layers.N
BLOCK_TENSORS = {
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


# ------------------------------------------------------------------ RoPE layout
def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face rows -> llama.cpp rows: in each head, row s * d/2 + i moves to 2i + s."""
    rows = w.shape[0]
    # (n_head, 2, d/2, ...) -> (n_head, d/2, 2, ...)
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp rows -> Hugging Face rows: in each head, row 2i + s moves to s * d/2 + i."""
    rows = w.shape[0]
    # (n_head, d/2, 2, ...) -> (n_head, 2, d/2, ...)
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _llama3_divisors(
    wavelen: np.ndarray, factor: float, low: float, high: float, original: float
) -> np.ndarray:
    f = np.ones_like(wavelen)
    f[wavelen > original / low] = factor
    mid = (wavelen >= original / high) & (wavelen <= original / low)
    r = (original / wavelen[mid] - low) / (high - low)
    f[mid] = 1 / ((1 - r) / factor + r)
    return f


def llama3_from_rope_freqs(
    factors: np.ndarray, head_dim: int, theta: float, original: int
) -> dict[str, Any]:
    """`llama3` scaling fields that reproduce the divisors f_i of a `rope_freqs` tensor.

    Llama 3's rule with wavelength w_i = 2 pi / theta_i and L the original context:
    f_i = 1 when w_i < L / high, f_i = s when w_i > L / low, and between,
    1 / f_i = (1 - r_i) / s + r_i with r_i = (L / w_i - low) / (high - low), linear in L / w_i;
    a least-squares line through the ramp's r_i gives low and high (1 and 4 without a ramp).
    The fitted rule must reproduce every f_i (relative error < 1e-3), else the file is refused.
    """
    factor = float(factors.max())
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    ramp = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    low, high = 1.0, 4.0
    if ramp.sum() >= 2:
        r = (1 / factors[ramp] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(original / wavelen[ramp], r, 1)
        if slope > 0:
            low = float(-intercept / slope)
            high = low + float(1 / slope)
    ok = low > 0 and high > low and len(factors) == len(wavelen)
    if ok:
        fitted = _llama3_divisors(wavelen, factor, low, high, original)
        ok = bool(np.all(np.abs(fitted / factors - 1) < 1e-3))
    if not ok:
        raise CheckpointError(
            "the GGUF file's rope_freqs tensor does not follow Llama 3's RoPE scaling rule, "
            "which is the only per-frequency scaling lmforge can represent."
        )
    return dict(
        rope_scaling="llama3",
        rope_factor=factor,
        rope_original_max_seq_len=original,
        rope_low_freq_factor=low,
        rope_high_freq_factor=high,
    )


# ------------------------------------------------------------------ config
def _int(meta: dict[str, Any], key: str, default: int | None = None, low: int = 1) -> int:
    value = meta.get(key, default)
    if value is None:
        raise CheckpointError(f"the GGUF file has no '{key}' metadata, which a llama model needs.")
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":  # per-layer values
        if value.size == 0 or (value != value.flat[0]).any():
            raise CheckpointError(
                f"'{key}' differs between layers ({value.tolist()[:4]}...), which lmforge's "
                "one-config-per-model cannot represent."
            )
        value = value.flat[0]
    return meta_int({key: value}, key, low=low)


def _architecture(meta: dict[str, Any]) -> str:
    arch = meta_str(meta, "general.architecture")
    if arch is None:
        raise CheckpointError(
            "the GGUF file has no general.architecture metadata; it is damaged or not a model."
        )
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"GGUF architecture '{arch}' is not supported; supported architectures: "
            f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}."
        )
    return str(arch)


def _rope(meta: dict[str, Any], f: GGUFFile | None, head_dim: int, theta: float) -> dict[str, Any]:
    p = "llama.rope."
    kind = meta_str(meta, f"{p}scaling.type", "none")
    factor = meta_float(meta, f"{p}scaling.factor", meta_float(meta, f"{p}scale_linear"))
    original = meta_int(meta, f"{p}scaling.original_context_length", low=1)
    if kind == "none" and meta.get(f"{p}scale_linear") is not None:
        kind = "linear"  # the older key of linear scaling
    if kind == "none" and f is not None and ROPE_FREQS in f.tensors:
        factors = f.tensor(ROPE_FREQS).astype(np.float64)
        if np.allclose(factors, 1.0):
            return {}
        return llama3_from_rope_freqs(factors, head_dim, theta, int(original or 8192))
    if kind == "none" or (factor is not None and float(factor) in (0.0, 1.0)):
        return {}
    if kind not in ("linear", "yarn") or factor is None:
        raise CheckpointError(
            f"GGUF rope scaling '{kind}' (factor {factor}) is not supported; supported: none, "
            "linear, yarn (with a factor) and Llama 3 rope_freqs."
        )
    out: dict[str, Any] = {"rope_scaling": kind, "rope_factor": float(factor)}
    if kind == "yarn":
        out["rope_original_max_seq_len"] = int(original or _int(meta, "llama.context_length"))
        for ours, theirs in (
            ("rope_beta_fast", "yarn_beta_fast"),
            ("rope_beta_slow", "yarn_beta_slow"),
        ):
            if meta_float(meta, f"{p}scaling.{theirs}"):
                out[ours] = meta_float(meta, f"{p}scaling.{theirs}")
    return out


def config_from_gguf(meta: dict[str, Any], f: GGUFFile | None = None) -> ModelConfig:
    """The `ModelConfig` of a Llama GGUF file's metadata (and tensor shapes, when `f` is given).

    Fields: block_count -> n_layer, embedding_length -> d_model, feed_forward_length -> d_ff,
    attention.head_count(_kv) -> n_head (n_kv_head), attention.key_length -> head_dim,
    context_length -> max_seq_len, rope.freq_base -> rope_theta,
    attention.layer_norm_rms_epsilon -> norm_eps, rope.scaling.* -> rope_*; the vocabulary
    size is the embedding's row count (else `vocab_size` or the token list's length).
    """
    _architecture(meta)
    if _int(meta, "llama.expert_count", 0, low=0):
        raise CheckpointError(
            "this GGUF llama model is a mixture of experts (llama.expert_count > 0), which "
            "lmforge cannot represent; only dense llama models can be imported."
        )
    tensors = f.tensors if f is not None else {}
    d_model = _int(meta, "llama.embedding_length")
    n_head = _int(meta, "llama.attention.head_count")
    head_dim = _int(meta, "llama.attention.key_length", d_model // n_head)
    if _int(meta, "llama.attention.value_length", head_dim) != head_dim:
        raise CheckpointError(
            "llama.attention.value_length differs from key_length, which lmforge cannot represent."
        )
    if _int(meta, "llama.rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(
            f"llama.rope.dimension_count={meta['llama.rope.dimension_count']} rotates only part "
            f"of each head of {head_dim} dims, which lmforge cannot represent."
        )
    if "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[0]
    else:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = meta_int(meta, "llama.vocab_size", 0, low=0) or len(
            tokens if isinstance(tokens, list) else []
        )
    theta = meta_float(meta, "llama.rope.freq_base", 10000.0)
    ids = {}
    for ours, key in (("bos_id", "bos"), ("eos_id", "eos"), ("pad_id", "padding")):
        value = meta_int(meta, f"tokenizer.ggml.{key}_token_id")
        ids[ours] = value if value is not None and 0 <= value < vocab else None
    return ModelConfig.from_dict(
        dict(
            arch="decoder",
            vocab_size=vocab,
            n_layer=_int(meta, "llama.block_count"),
            n_head=n_head,
            n_kv_head=_int(meta, "llama.attention.head_count_kv", n_head),
            d_model=d_model,
            head_dim=head_dim,
            d_ff=_int(meta, "llama.feed_forward_length"),
            max_seq_len=_int(meta, "llama.context_length", 2048),
            pos="rope",
            rope_theta=theta,
            **_rope(meta, f, head_dim, theta),
            norm="rmsnorm",
            norm_eps=meta_float(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5),
            norm_placement="pre",
            mlp="glu",
            activation="silu",
            bias="blk.0.attn_q.bias" in tensors,
            tie_embeddings=bool(tensors) and "output.weight" not in tensors,
            dropout=0.0,
            attn_dropout=0.0,
            heads=("lm",),
            **ids,
        )
    )


# ------------------------------------------------------------------ tensors
def tensor_names(cfg: ModelConfig) -> dict[str, str]:
    """GGUF tensor name -> lmforge tensor name for a Llama config."""
    out = {"token_embd.weight": "embed.tok.weight", "output_norm.weight": "decoder.norm.weight"}
    if not cfg.tie_embeddings:
        out["output.weight"] = "heads.lm_head.weight"
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        for theirs, ours in BLOCK_TENSORS.items():
            for kind in kinds:
                if kind == "bias" and "norm" in theirs:
                    continue
                out[f"blk.{i}.{theirs}.{kind}"] = f"decoder.layers.{i}.{ours}.{kind}"
    return out


def state_from_gguf(cfg: ModelConfig, f: GGUFFile) -> dict[str, torch.Tensor]:
    """Dequantize and rename every tensor of a Llama GGUF file; q/k rows back to rotate-half."""
    shapes = expected_shapes(cfg)
    names = tensor_names(cfg)
    left = [k for k in f.tensors if k not in names and k != ROPE_FREQS]
    if left:
        raise CheckpointError(
            f"the GGUF file has tensor(s) {left[:3]} that a llama model with this config does "
            "not use; its metadata does not match the weights."
        )
    state: dict[str, torch.Tensor] = {}
    for theirs, ours in names.items():
        if theirs not in f.tensors:
            raise CheckpointError(
                f"the GGUF file has no tensor '{theirs}', which a llama model with this config "
                "needs; its metadata does not match the weights."
            )
        have, want = f.tensors[theirs].shape, shapes[ours]
        if tuple(have) != tuple(want):
            raise CheckpointError(
                f"tensor '{theirs}' has shape {tuple(have)} in the GGUF file but the config "
                f"implies {tuple(want)}; its metadata does not match the weights."
            )
        t = torch.from_numpy(f.tensor(theirs))
        check_finite(theirs, t, f.path)
        if ".attn_q." in theirs:
            t = unpermute_rope(t, cfg.n_head)
        elif ".attn_k." in theirs:
            t = unpermute_rope(t, cfg.n_kv_head)
        state[ours] = t.contiguous()
    return state


def import_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Convert a Llama-architecture GGUF file into an lmforge model dir.

    Tensors stored as F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K are dequantized to float32;
    the tokenizer embedded in the file ("gpt2" BPE or "llama" SentencePiece) is saved with it.

    Args:
        path: the .gguf file.
        out_dir: where to write `config.json`, `model.safetensors` and the tokenizer files.

    Returns:
        out_dir as a Path.
    """
    f = read_gguf(path)
    _architecture(f.metadata)
    cfg = config_from_gguf(f.metadata, f)
    tokenizer = tokenizer_from_gguf(f.metadata, cfg.max_seq_len)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"the GGUF tokenizer has {tokenizer.vocab_size} tokens but the embedding only "
            f"{cfg.vocab_size} rows; the file's vocabulary does not match its weights."
        )
    out_dir = Path(out_dir)
    save_weights(cfg, state_from_gguf(cfg, f), out_dir)
    if tokenizer is not None:
        tokenizer.save(out_dir)
    return out_dir
