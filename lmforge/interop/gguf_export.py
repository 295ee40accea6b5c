"""Export lmforge model dirs as GGUF files (llama.cpp, Ollama): Llama- and GPT-2-family models.

    export_gguf(model_dir, out, type)   config -> GGUF metadata (`llama.*` or `gpt2.*`)
                                        weights -> GGUF tensors (q/k rows permuted for llama.cpp's
                                        RoPE, q/k/v fused for GPT-2), quantized by the `gguf`
                                        package; tokenizer -> `tokenizer.ggml.*` + chat template

The family is read from the config's fields, never from a name: RoPE + RMSNorm + SwiGLU is
`llama`; learned positions + LayerNorm + GELU MLP with biases and a tied head is `gpt2` (the
family table, `lmforge.config.families`, holds those traits, the metadata keys and the tensor
names, which `lmforge.interop.gguf` reads back).
`--type` picks how the matrices are stored: f32, f16, q8_0 (blocks of 32 int8 values with one
f16 scale: w = d q) or q4_0 (blocks of 32 4-bit values: w = d (q - 8)); norms and biases stay
f32, and a matrix whose rows are not a multiple of 32 falls back to f16, as llama.cpp's own tools
do. The tokenizer must be a byte-level BPE (lmforge's own, GPT-2's, Llama 3's, SmolLM's), which
GGUF stores as the "gpt2" tokenizer model; ids beyond the tokenizer's vocabulary (a padded
embedding) become unused `[PAD{i}]` tokens so the vocabulary matches the embedding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.gguf import gguf_format, permute_rope, tensor_names
from lmforge.interop.gguf_vocab import CONTROL, LLAMA3_SPLIT, NORMAL, UNUSED, USER_DEFINED
from lmforge.models.io import WEIGHTS, is_model_dir
from lmforge.tokenizer import Tokenizer
from lmforge.utils.fs import atomic_path

EXPORT_TYPES: tuple[str, ...] = ("f32", "f16", "q8_0", "q4_0")


def gguf_family(cfg: ModelConfig) -> str:
    """ "llama" or "gpt2": the GGUF architecture whose family traits the config has (the family
    table's); `CheckpointError` for anything else."""
    return gguf_format(cfg).arch


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            "`--to-gguf` needs the gguf package; install it with `pip install 'lmforge[gguf]'`."
        ) from None
    return gguf


def _store(gguf: Any, t: torch.Tensor, kind: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type) of one tensor: matrices as `kind`, vectors as f32."""
    q = gguf.GGMLQuantizationType
    a = t.detach().float().contiguous().numpy()
    if a.ndim == 1 or kind == "f32":
        return a, q.F32
    if kind == "f16" or a.shape[-1] % 32:
        return a.astype(np.float16), q.F16
    qtype = q.Q8_0 if kind == "q8_0" else q.Q4_0
    return gguf.quants.quantize(a, qtype), qtype


def _tensors(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GGUF name -> tensor: names from the family table, fused tensors stacked by rows (GPT-2's
    `attn_qkv` = rows of q, then k, then v), llama's q/k rows in llama.cpp's RoPE order."""
    out = {}
    for theirs, ours in tensor_names(cfg).items():
        t = torch.cat([state[n] for n in ours]) if len(ours) > 1 else state[ours[0]]
        if cfg.pos == "rope" and ".attn_q." in theirs:
            t = permute_rope(t, cfg.n_head)
        elif cfg.pos == "rope" and ".attn_k." in theirs:
            t = permute_rope(t, cfg.n_kv_head)
        out[theirs] = t
    return out


def _hparams(w: Any, cfg: ModelConfig) -> None:
    """`{arch}.*` metadata: every key the family table maps, then RoPE scaling."""
    fmt = gguf_format(cfg)
    for ours, key in fmt.fields:
        add = w.add_float32 if key.kind == "float" else w.add_uint32
        add(f"{fmt.arch}.{key.name}", getattr(cfg, ours))
    if cfg.rope_scaling == "linear":
        w.add_rope_scaling_type(_gguf().RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_factor)
    elif cfg.rope_scaling is not None:
        raise CheckpointError(
            f"GGUF export supports no RoPE scaling or 'linear', not '{cfg.rope_scaling}'; export "
            "the model before extending its context, or use --to-hf."
        )


def _vocab(w: Any, tok: Tokenizer, vocab_size: int) -> None:
    """`tokenizer.ggml.*` of a byte-level BPE tokenizer, padded to the embedding's rows."""
    spec = json.loads(tok.backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(pre):
        raise CheckpointError(
            "GGUF export needs a byte-level BPE tokenizer (as lmforge, GPT-2, Llama 3 and "
            "SmolLM use); this model's tokenizer is another kind."
        )
    split = "llama-bpe" if LLAMA3_SPLIT in json.dumps(pre, ensure_ascii=False) else "gpt-2"
    if tok.vocab_size > vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tok.vocab_size} tokens but the embedding only {vocab_size} "
            "rows; the model dir's tokenizer does not belong to its weights."
        )
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        text = tok.id_to_token(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(text)
            kind = added.get(i)
            types.append(NORMAL if kind is None else CONTROL if kind["special"] else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(split)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for role, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("pad", w.add_pad_token_id),
        ("unk", w.add_unk_token_id),
    ):
        value = getattr(tok, f"{role}_id")
        if value is not None:
            add(value)
    probe = tok.encode("a", add_special_tokens=True)
    bare = tok.encode("a")
    w.add_add_bos_token(len(probe) > len(bare) and probe[0] == tok.bos_id)
    w.add_add_eos_token(len(probe) > len(bare) and probe[-1] == tok.eos_id)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)


def export_gguf(model_dir: str | Path, out: str | Path, type: str = "f16") -> Path:
    """Write an lmforge model dir (Llama or GPT-2 family) as one GGUF file.

    Args:
        model_dir: `config.json` + `model.safetensors` + the tokenizer files.
        out: the .gguf file to write (atomically).
        type: how matrices are stored: "f32", "f16", "q8_0" or "q4_0".

    Returns:
        out as a Path.
    """
    if type not in EXPORT_TYPES:
        raise ConfigError(f"unknown GGUF type '{type}'; choose one of {', '.join(EXPORT_TYPES)}.")
    model_dir, out = Path(model_dir), Path(out)
    if not is_model_dir(model_dir):
        raise CheckpointError(
            f"{model_dir} is not an lmforge model dir (it needs config.json and "
            f"{WEIGHTS}); pass a pretrained run dir or a converted model."
        )
    cfg = ModelConfig.from_dir(model_dir)
    if cfg.quantization:
        raise CheckpointError(
            f"{model_dir} is quantized by `lmforge quantize`; export the floating-point model "
            "and let --type q8_0 or q4_0 quantize it the GGUF way."
        )
    family = gguf_family(cfg)
    if not (model_dir / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{model_dir} has no tokenizer.json, and a GGUF file carries its tokenizer; save the "
            "tokenizer into the model dir first."
        )
    tok = Tokenizer.load(model_dir)
    state = load_file(str(model_dir / WEIGHTS))
    if cfg.tie_embeddings:
        state.pop("heads.lm_head.weight", None)
    tensors = _tensors(cfg, state)

    gguf = _gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), family)
        w.add_name(model_dir.resolve().name)
        _hparams(w, cfg)
        file_type = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}[type]  # llama.cpp's LLAMA_FTYPE_*
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _vocab(w, tok, cfg.vocab_size)
        for name, t in tensors.items():
            data, qtype = _store(gguf, t, type)
            quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            w.add_tensor(name, data, raw_dtype=qtype if quantized else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
