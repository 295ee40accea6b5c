"""Import Llama- and GPT-2-architecture GGUF files (llama.cpp, Ollama) into lmforge model dirs.

    import_gguf(file, out)   read_gguf -> config_from_gguf -> state_from_gguf (dequantize,
                             undo the RoPE row permutation, split fused q/k/v)
                             -> save_weights + tokenizer

The family table (`lmforge.config.families`) says, per architecture, which metadata key
(`llama.*`, `gpt2.*`) holds which `ModelConfig` field and how tensors are renamed
(`blk.N.attn_q.weight` -> `decoder.layers.N.attn.q_proj.weight`, GPT-2's `blk.N.attn_qkv`
-> q, k and v stacked by rows); `output.weight` absent means a tied LM head.

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
from lmforge.config.families import FAMILIES, Family, GgufFormat, differences, unstored
from lmforge.errors import CheckpointError
from lmforge.interop.gguf_file import GGUFFile, meta_float, meta_int, meta_str, read_gguf
from lmforge.interop.gguf_vocab import tokenizer_from_gguf
from lmforge.interop.hf import expected_shapes
from lmforge.models.io import check_finite, save_weights

# GGUF architecture -> its family; the metadata keys and tensor names are the family table's
GGUF_FAMILIES: dict[str, Family] = {f.gguf.arch: f for f in FAMILIES.values() if f.gguf}
SUPPORTED_GGUF_ARCHITECTURES: tuple[str, ...] = tuple(GGUF_FAMILIES)
ROPE_FREQS = "rope_freqs.weight"


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
def _int(meta: dict[str, Any], key: str, default: int | None = None, low: int = 1) -> int | None:
    """An integer (`default` when absent); per-layer arrays must hold one value for all layers."""
    value = meta.get(key, default)
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":  # per-layer values
        if value.size == 0 or (value != value.flat[0]).any():
            raise CheckpointError(
                f"'{key}' differs between layers ({value.tolist()[:4]}...), which lmforge's "
                "one-config-per-model cannot represent."
            )
        value = value.flat[0]
    return meta_int({key: value}, key, low=low)


def _family(meta: dict[str, Any]) -> Family:
    arch = meta_str(meta, "general.architecture")
    if arch is None:
        raise CheckpointError(
            "the GGUF file has no general.architecture metadata; it is damaged or not a model."
        )
    if arch not in GGUF_FAMILIES:
        raise CheckpointError(
            f"GGUF architecture '{arch}' is not supported; supported architectures: "
            f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}."
        )
    return GGUF_FAMILIES[arch]


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


def _fields(meta: dict[str, Any], fmt: GgufFormat) -> dict[str, Any]:
    """The `ModelConfig` fields the family table maps, each from the first of its keys."""
    out: dict[str, Any] = {}
    for ours, key in fmt.fields:
        if ours in out:
            continue  # a further key of the same field: checked against the config later
        name = f"{fmt.arch}.{key.name}"
        if key.kind == "float":
            value = meta_float(meta, name, key.default)
        else:
            value = _int(meta, name, key.default)
        if value is None and key.required:
            raise CheckpointError(
                f"the GGUF file has no '{name}' metadata, which a {fmt.arch} model needs."
            )
        if value is not None:
            out[ours] = value
    return out


def _check_repeated(meta: dict[str, Any], fmt: GgufFormat, cfg: ModelConfig) -> None:
    """Keys that store the same field (llama's head size three times) must agree with it."""
    first: dict[str, str] = {}
    for ours, key in fmt.fields:
        name = f"{fmt.arch}.{key.name}"
        if ours not in first:
            first[ours] = name
            continue
        value = _int(meta, name)
        if value is not None and value != getattr(cfg, ours):
            raise CheckpointError(
                f"GGUF metadata '{name}' is {value} but {ours} is {getattr(cfg, ours)} (from "
                f"'{first[ours]}' or its default); lmforge keeps one {ours} per model (keys, "
                "values and RoPE alike) and cannot represent this file."
            )


def config_from_gguf(meta: dict[str, Any], f: GGUFFile | None = None) -> ModelConfig:
    """The `ModelConfig` of a GGUF file's metadata (and tensor shapes, when `f` is given).

    The family comes from `general.architecture`; its traits, the metadata keys of each field
    and their defaults are the family table's (`lmforge.config.families`, e.g. for llama:
    block_count -> n_layer, embedding_length -> d_model, feed_forward_length -> d_ff,
    attention.head_count(_kv) -> n_head (n_kv_head), attention.key_length -> head_dim,
    context_length -> max_seq_len, rope.freq_base -> rope_theta,
    attention.layer_norm_rms_epsilon -> norm_eps); rope.scaling.* -> rope_*. The vocabulary
    size is the embedding's row count (else `{arch}.vocab_size` or the token list's length); a
    tied head is an absent `output.weight`, biases are present `blk.0.attn_*.bias` tensors.
    """
    family = _family(meta)
    fmt = family.gguf
    assert fmt is not None
    arch = fmt.arch
    if _int(meta, f"{arch}.expert_count", 0, low=0):
        raise CheckpointError(
            f"this GGUF {arch} model is a mixture of experts ({arch}.expert_count > 0), which "
            f"lmforge cannot represent; only dense {arch} models can be imported."
        )
    tensors = f.tensors if f is not None else {}
    values = {**family.traits, **fmt.implied, **_fields(meta, fmt)}
    # what the architecture fixes; where it accepts several values, the family's preset choice
    values.update(
        {k: family.preset[k] if isinstance(v, frozenset) else v for k, v in fmt.fixed.items()}
    )
    if "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[0]
    else:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = meta_int(meta, f"{arch}.vocab_size", 0, low=0) or len(
            tokens if isinstance(tokens, list) else []
        )
    values["vocab_size"] = vocab
    if family.traits["pos"] == "rope":
        head_dim = values.get("head_dim") or values["d_model"] // values["n_head"]
        values.update(_rope(meta, f, head_dim, values["rope_theta"]))
    if "bias" not in family.traits:  # biases on the projections when the file has them
        first = next(k for k in fmt.block_tensors if "norm" not in k)
        values["bias"] = f"blk.0.{first}.bias" in tensors
    if "tie_embeddings" not in values:
        values["tie_embeddings"] = bool(tensors) and "output.weight" not in tensors
    for ours, key in (("bos_id", "bos"), ("eos_id", "eos"), ("pad_id", "padding")):
        value = meta_int(meta, f"tokenizer.ggml.{key}_token_id")
        values[ours] = value if value is not None and 0 <= value < vocab else None
    cfg = ModelConfig.from_dict(values)
    _check_repeated(meta, fmt, cfg)
    return cfg


# ------------------------------------------------------------------ tensors
def _with_bias(module: str, cfg: ModelConfig) -> bool:
    """A norm has a bias when it is a LayerNorm, a projection in a block when the config has
    biases, an embedding or the LM head never."""
    if module.startswith(("embed.", "heads.")):
        return False
    return cfg.norm == "layernorm" if "norm" in module else cfg.bias


def tensor_names(cfg: ModelConfig, fmt: GgufFormat | None = None) -> dict[str, tuple[str, ...]]:
    """GGUF tensor name -> the lmforge tensor(s) it holds (several when GGUF fuses them, stacked
    along the rows), from the family table; `fmt` defaults to the config's GGUF family."""
    if fmt is None:
        fmt = gguf_format(cfg)
    out: dict[str, tuple[str, ...]] = {}

    def add(theirs: str, ours: str | tuple[str, ...], prefix: str = "") -> None:
        mods = (ours,) if isinstance(ours, str) else ours
        kinds = ("weight", "bias") if _with_bias(mods[0], cfg) else ("weight",)
        for kind in kinds:
            out[f"{theirs}.{kind}"] = tuple(f"{prefix}{m}.{kind}" for m in mods)

    for theirs, ours in fmt.tensors.items():
        if ours == "heads.lm_head" and cfg.tie_embeddings:
            continue  # llama.cpp reuses token_embd
        add(theirs, ours)
    for i in range(cfg.n_layer):
        for theirs, ours in fmt.block_tensors.items():
            add(f"blk.{i}.{theirs}", ours, f"decoder.layers.{i}.")
    return out


def gguf_format(cfg: ModelConfig) -> GgufFormat:
    """The GGUF architecture that represents `cfg` exactly: the family whose traits and GGUF
    choices it has, where GGUF stores every field it sets. `CheckpointError` when none does."""
    reasons = []
    for family in GGUF_FAMILIES.values():
        fmt = family.gguf
        assert fmt is not None
        expected = {**family.traits, **fmt.fixed, **unstored(cfg, {f for f, _ in fmt.fields})}
        reason = differences(cfg, expected)
        if reason is None and "lm" not in cfg.heads:
            reason = f"heads={list(cfg.heads)} (needs 'lm')"
        if reason is None:
            return fmt
        reasons.append(f"{fmt.arch}: {reason}")
    raise CheckpointError(
        "GGUF covers Llama-family (RoPE, RMSNorm, SwiGLU) and GPT-2-family (learned "
        "positions, LayerNorm, GELU, tied head) decoders; this model is neither "
        f"({'; '.join(reasons)})."
    )


def state_from_gguf(cfg: ModelConfig, f: GGUFFile) -> dict[str, torch.Tensor]:
    """Dequantize and rename every tensor of a GGUF file; fused tensors split, llama's q/k rows
    back to rotate-half."""
    fmt = _family(f.metadata).gguf
    assert fmt is not None
    shapes = expected_shapes(cfg)
    names = tensor_names(cfg, fmt)
    # llama.cpp's GPT-2 converter stores the tied head as a copy of token_embd
    copy = "output.weight" if cfg.tie_embeddings and "output.weight" in f.tensors else None
    if copy is not None and not np.array_equal(f.tensor(copy), f.tensor("token_embd.weight")):
        raise CheckpointError(
            f"the GGUF file's output.weight differs from token_embd.weight, but a {fmt.arch} "
            "model imported by lmforge ties them; this file's head cannot be represented."
        )
    left = [k for k in f.tensors if k not in names and k not in (ROPE_FREQS, copy)]
    if left:
        raise CheckpointError(
            f"the GGUF file has tensor(s) {left[:3]} that a {fmt.arch} model with this config "
            "does not use; its metadata does not match the weights."
        )
    state: dict[str, torch.Tensor] = {}
    for theirs, ours in names.items():
        if theirs not in f.tensors:
            raise CheckpointError(
                f"the GGUF file has no tensor '{theirs}', which a {fmt.arch} model with this "
                "config needs; its metadata does not match the weights."
            )
        parts = [shapes[name] for name in ours]
        have, want = f.tensors[theirs].shape, (sum(p[0] for p in parts), *parts[0][1:])
        if tuple(have) != tuple(want):
            raise CheckpointError(
                f"tensor '{theirs}' has shape {tuple(have)} in the GGUF file but the config "
                f"implies {tuple(want)}; its metadata does not match the weights."
            )
        t = torch.from_numpy(f.tensor(theirs))
        check_finite(theirs, t, f.path)
        if cfg.pos == "rope" and ".attn_q." in theirs:
            t = unpermute_rope(t, cfg.n_head)
        elif cfg.pos == "rope" and ".attn_k." in theirs:
            t = unpermute_rope(t, cfg.n_kv_head)
        chunks = t.split([p[0] for p in parts]) if len(parts) > 1 else (t,)
        for name, chunk in zip(ours, chunks, strict=True):
            state[name] = chunk.contiguous()
    return state


def import_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Convert a Llama- or GPT-2-architecture GGUF file into an lmforge model dir.

    Tensors stored as F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K are dequantized to float32;
    the tokenizer embedded in the file ("gpt2" BPE or "llama" SentencePiece) is saved with it.

    Args:
        path: the .gguf file.
        out_dir: where to write `config.json`, `model.safetensors` and the tokenizer files.

    Returns:
        out_dir as a Path.
    """
    f = read_gguf(path)
    _family(f.metadata)
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
