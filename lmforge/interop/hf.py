"""Hugging Face checkpoints in and out: gpt2, llama, bert and t5.

A Hugging Face dir is `config.json` + `model.safetensors` (or shards listed in
`model.safetensors.index.json`) + tokenizer files when present; an lmforge dir is `config.json`
+ `model.safetensors` + tokenizer files (`lmforge.models.save_model`). Conversion is
config mapping plus tensor renaming (`Rule`s of each family), both ways:

    import_hf(hf_dir, out)    config_from_hf -> resolve_tying -> state_from_hf -> save_model
    export_hf(model_dir, out) load_model -> config_to_hf + state_to_hf -> config.json, safetensors

Nothing is unpickled: a dir holding only `pytorch_model.bin` is refused with a clear message.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.interop.base import Family, HfConfig
from lmforge.interop.bert import BERT
from lmforge.interop.gpt2 import GPT2
from lmforge.interop.llama import LLAMA
from lmforge.interop.t5 import T5
from lmforge.models.io import load_model, load_state_dict, save_model, state_dict_for_saving
from lmforge.models.transformer import Transformer
from lmforge.utils.fs import atomic_path, atomic_write_text

FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2, LLAMA, BERT, T5)}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(
    arch for f in FAMILIES.values() for arch in f.architectures
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "sentence_bert_config.json",  # sentence-transformers' max_seq_length for embeddings
)
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"


# ------------------------------------------------------------------ families
def family_from_hf(hf_config: HfConfig) -> tuple[Family, tuple[str, ...], str]:
    """(family, lmforge heads, architecture name) of a Hugging Face `config.json`."""
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    family = FAMILIES.get(hf_config.get("model_type", ""))
    if family is None and arch is not None:
        family = next((f for f in FAMILIES.values() if arch in f.architectures), None)
    if family is None or (arch is not None and arch not in family.architectures):
        what = f"architecture '{arch}'" if arch else f"model_type '{hf_config.get('model_type')}'"
        raise CheckpointError(
            f"Hugging Face {what} is not supported; supported architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    if arch is None:
        arch = next(iter(family.architectures))  # the family's model with its usual head
    return family, family.architectures[arch], arch


def family_of(cfg: ModelConfig) -> Family:
    """The Hugging Face family that represents `cfg` exactly (chosen by its choices, not a name)."""
    if not cfg.is_uniform:
        raise CheckpointError(
            "this model has per-block sizes (a structurally pruned model) and Hugging Face "
            "configs hold one size for all blocks, so it cannot be exported; use it in lmforge."
        )
    reasons = []
    for family in FAMILIES.values():
        reason = family.why_not(cfg)
        if reason is None and family.architecture_for(cfg.heads) is None:
            heads = [list(h) for h in family.architectures.values()]
            reason = f"heads={list(cfg.heads)} (needs one of {heads})"
        if reason is None:
            return family
        reasons.append(f"{family.model_type}: {reason}")
    raise CheckpointError(
        f"this model config has no Hugging Face equivalent ({'; '.join(reasons)}); "
        "only gpt2-, llama-, bert- and t5-style configs can be exported."
    )


def config_from_hf(hf_config: HfConfig) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face `config.json` (a dict)."""
    family, heads, _ = family_from_hf(hf_config)
    return ModelConfig.from_dict(family.read_config(hf_config, heads))


def config_to_hf(cfg: ModelConfig) -> HfConfig:
    """A Hugging Face `config.json` (a dict, with `architectures` and `model_type`) for `cfg`."""
    family = family_of(cfg)
    out = family.write_config(cfg)
    out["architectures"] = [family.architecture_for(cfg.heads)]
    out["model_type"] = family.model_type
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ tensors
def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the stored lmforge tensors of `cfg` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _with_prefix(hf_state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Checkpoints of a bare base model (`BertModel`) omit the prefix that rules carry."""
    if not prefix or any(k.startswith(prefix) for k in hf_state):
        return dict(hf_state)
    return {prefix + k: v for k, v in hf_state.items()}


def _uses_tied_head(cfg: ModelConfig) -> bool:
    return cfg.tie_embeddings and bool({"lm", "mlm"} & set(cfg.heads))


def resolve_tying(
    cfg: ModelConfig, hf_state: dict[str, torch.Tensor]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Untie `cfg` when the checkpoint holds an output matrix that differs from the embedding.

    transformers 5 marks every T5 as tied and keeps a separate `lm_head.weight` (T5 v1.1) when
    the stored values differ. A scaled tied head, logits = (h * d^-0.5) W^T, becomes an untied
    head with the scale folded in: W' = d^-0.5 W, so the logits stay the same.
    """
    family = family_of(cfg)
    state = _with_prefix(hf_state, family.base_prefix)
    head, emb = state.get(family.lm_weight), state.get(family.embedding)
    if not _uses_tied_head(cfg) or head is None or emb is None or torch.equal(head, emb):
        return cfg, state
    if cfg.tied_logit_scale and "lm" in cfg.heads:
        state[family.lm_weight] = head * cfg.d_model**-0.5
    return cfg.replace(tie_embeddings=False, tied_logit_scale=False), state


def state_from_hf(cfg: ModelConfig, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split, transpose) Hugging Face tensors into lmforge's names for `cfg`.

    Every tensor the config needs must be present with the shape the config implies; every
    tensor present must be used or be a known leftover (buffers, tied copies).
    """
    family = family_of(cfg)
    arch = family.architecture_for(cfg.heads)
    state = _with_prefix(hf_state, family.base_prefix)
    shapes = expected_shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for r in family.rules(cfg):
        t = state.get(r.theirs)
        if t is None:
            raise CheckpointError(
                f"the checkpoint has no tensor '{r.theirs}', which a {arch} with this config "
                "needs; config.json does not match the weights."
            )
        parts = [shapes[name] for name in r.ours]
        want = (sum(p[0] for p in parts), *parts[0][1:])  # ours stacked along dim 0
        if r.transpose:
            want = want[::-1]
        if tuple(t.shape) != want:
            raise CheckpointError(
                f"tensor '{r.theirs}' has shape {tuple(t.shape)} in the checkpoint but the config "
                f"implies {want}; config.json does not match the weights."
            )
        used.add(r.theirs)
        if r.transpose:
            t = t.t()  # Conv1D (in, out) -> Linear (out, in)
        chunks = t.split([p[0] for p in parts], dim=0) if len(parts) > 1 else (t,)
        for name, chunk in zip(r.ours, chunks, strict=True):
            out[name] = chunk.contiguous()
    if _uses_tied_head(cfg) and family.lm_weight in state:
        if not torch.equal(state[family.lm_weight], state[family.embedding]):
            raise CheckpointError(
                f"tensor '{family.lm_weight}' differs from the token embedding but the config "
                "ties them; set tie_embeddings=false (import_hf does this for you)."
            )
        used.add(family.lm_weight)
    left = [k for k in state if k not in used and not any(re.search(p, k) for p in family.ignore)]
    if left:
        raise CheckpointError(
            f"the checkpoint has tensor(s) {left[:3]} that a {arch} with this config does not "
            "use; config.json does not match the weights."
        )
    return out


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lmforge tensors (as `save_model` stores them) -> Hugging Face names for `cfg`."""
    family = family_of(cfg)
    out: dict[str, torch.Tensor] = {}
    for r in family.rules(cfg):
        missing = [name for name in r.ours if name not in state]
        if missing:
            raise CheckpointError(
                f"the model state has no tensor '{missing[0]}', which its config needs; "
                "the weights do not match config.json."
            )
        t = torch.cat([state[n] for n in r.ours], dim=0) if len(r.ours) > 1 else state[r.ours[0]]
        out[r.theirs] = (t.t() if r.transpose else t).contiguous()
    hf_config = family.write_config(cfg)
    if _uses_tied_head(cfg) and hf_config.get("tie_word_embeddings") is False:
        # tied in lmforge but written untied (T5 without output scaling): store a copy
        out[family.lm_weight] = out[family.embedding].clone()
    if not cfg.heads and family.base_prefix:  # a bare model stores its names unprefixed
        n = len(family.base_prefix)
        out = {k[n:] if k.startswith(family.base_prefix) else k: v for k, v in out.items()}
    return out


# ------------------------------------------------------------------ files
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; pass a Hugging Face model dir.") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e.msg}); repair or re-save it."
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} is missing; download it again.") from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"cannot read weights {path} ({e}); the file is damaged or not safetensors."
        ) from None


def read_hf_state(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face dir: `model.safetensors` or the shards of its index."""
    hf_dir = Path(hf_dir)
    if (hf_dir / HF_WEIGHTS).is_file():
        return _load_safetensors(hf_dir / HF_WEIGHTS)
    if (hf_dir / HF_INDEX).is_file():
        weight_map = _read_json(hf_dir / HF_INDEX).get("weight_map") or {}
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_load_safetensors(hf_dir / shard))
        return state
    if any(hf_dir.glob("*.bin")) or any(hf_dir.glob("*.pt")):
        raise CheckpointError(
            f"{hf_dir} holds only pickle weights (*.bin), which lmforge never loads; re-save "
            "them with save_pretrained(..., safe_serialization=True) and convert again."
        )
    raise CheckpointError(
        f"{hf_dir} has no {HF_WEIGHTS} or {HF_INDEX}; pass a Hugging Face model dir."
    )


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files that exist in `src` into `dst`; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            with atomic_path(dst / name) as tmp:
                shutil.copyfile(src / name, tmp)
            copied.append(name)
    return copied


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a Hugging Face dir (gpt2, llama, bert, t5) into an lmforge model dir.

    Args:
        hf_dir: `config.json` + `model.safetensors` (or sharded) + tokenizer files if any.
        out_dir: where to write `config.json`, `model.safetensors` and the tokenizer files.

    Returns:
        out_dir as a Path.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir} is not a directory; pass a Hugging Face model dir.")
    cfg = config_from_hf(_read_json(hf_dir / HF_CONFIG))
    cfg, hf_state = resolve_tying(cfg, read_hf_state(hf_dir))
    state = state_from_hf(cfg, hf_state)
    model = Transformer(cfg)
    load_state_dict(model, state, hf_dir)
    save_model(model, out_dir)
    copy_tokenizer_files(hf_dir, out_dir)
    return out_dir


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an lmforge model dir as a Hugging Face dir that `from_pretrained` loads.

    Returns:
        out_dir as a Path, holding `config.json`, `model.safetensors` and the tokenizer files.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir)
    cfg = model.cfg
    hf_config = config_to_hf(cfg)
    hf_state = state_to_hf(cfg, state_dict_for_saving(model))
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / HF_WEIGHTS) as tmp:
        save_file(hf_state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / HF_CONFIG, json.dumps(hf_config, indent=2) + "\n")
    copy_tokenizer_files(model_dir, out_dir)
    return out_dir
