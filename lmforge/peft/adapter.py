"""Adapters on disk: only the adapter's tensors, loadable onto the base model they were made for.

An adapter dir holds

    adapter.safetensors     the adapter parameters (LoRA A and B, soft prompt, prefixes,
                            modules_to_save, LoRA biases with train_bias), nothing of the base
    adapter_config.json     {"format", "version", "method" ("lora", "prompt", "prefix" or a
                            "+"-joined combination), "configs" {method: config},
                            "base_model" (the base ModelConfig, for a compatibility check)}

`load_adapter(base, dir)` checks the base's config, applies the same methods (without their
initialisation) and loads the tensors. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import AdapterError
from lmforge.peft.base import adapter_parameter_names, check_absent, config_from_dict, peft_configs
from lmforge.peft.lora import LoRAConfig, apply_lora
from lmforge.peft.prompt import PrefixConfig, PromptConfig, attach_prefix, attach_prompt
from lmforge.utils.fs import atomic_path, atomic_write_text

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "lmforge-adapter"
CONFIGS: dict[str, type] = {"lora": LoRAConfig, "prompt": PromptConfig, "prefix": PrefixConfig}
# config fields that change training, not the network, so an adapter still fits
RUNTIME_FIELDS = {"dropout", "attn_dropout"}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors by state-dict name (a tied tensor once, under its first name)."""
    names = set(adapter_parameter_names(model))
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in names and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach()
    return out


def _apply(model: nn.Module, cfg: Any) -> None:
    if isinstance(cfg, LoRAConfig):
        apply_lora(model, cfg)
    elif isinstance(cfg, PromptConfig):
        attach_prompt(model, cfg, initialise=False)
    else:
        attach_prefix(model, cfg, initialise=False)


def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Write the adapter of `model` (not the base weights) to `out_dir`, each file atomically."""
    configs = peft_configs(model)
    if not configs:
        raise AdapterError(
            "this model has no adapter to save; apply_lora, apply_prompt_tuning or "
            "apply_prefix_tuning first (a full model is saved with lmforge.models.save_model)."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state(model).items()}
    with atomic_path(out_dir / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    base = getattr(model, "cfg", None)
    record = {
        "format": FORMAT,
        "version": 1,
        "method": "+".join(configs),
        "configs": {m: dataclasses.asdict(c) for m, c in configs.items()},
        "base_model": base.to_dict() if base is not None else None,
        "parameters": sum(t.numel() for t in tensors.values()),
    }
    atomic_write_text(out_dir / ADAPTER_CONFIG, json.dumps(record, indent=2) + "\n")
    return out_dir


def is_adapter_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The parsed `adapter_config.json` of an adapter dir (checked to be one)."""
    adapter_dir = Path(adapter_dir)
    if not is_adapter_dir(adapter_dir):
        raise AdapterError(
            f"{adapter_dir} is not an lmforge adapter (it needs {ADAPTER_CONFIG} and "
            f"{ADAPTER_WEIGHTS}); pass a directory written by save_adapter."
        )
    try:
        record = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG} is not valid JSON ({e.msg}).") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG} is not an lmforge adapter config.")
    return record


def check_base(model: nn.Module, base: dict[str, Any] | None, source: Path) -> None:
    """The model must have the config the adapter was trained on (dropout rates aside)."""
    cfg = getattr(model, "cfg", None)
    if base is None or cfg is None:
        return
    mine = cfg.to_dict()
    for key, value in base.items():
        if key in RUNTIME_FIELDS or mine.get(key) == value:
            continue
        raise AdapterError(
            f"the adapter in {source} was made for a base model with {key}={value!r}, but this "
            f"model has {key}={mine.get(key)!r}; load it onto the base model it was trained from."
        )


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply the adapter saved in `adapter_dir` to the base `model`, in place, and load its tensors.

    The base is checked against the config the adapter recorded; the adapter's parameters are
    left trainable (so training can go on) and the base frozen, as after `apply_*`.

    Returns:
        the same model.
    """
    adapter_dir = Path(adapter_dir)
    record = read_adapter_config(adapter_dir)
    check_base(model, record.get("base_model"), adapter_dir)
    configs = []
    source = str(adapter_dir / ADAPTER_CONFIG)
    for method, values in record.get("configs", {}).items():
        if method not in CONFIGS:
            raise AdapterError(f"unknown adapter method '{method}' in {source}.")
        configs.append(config_from_dict(CONFIGS[method], values, source))
    for cfg in configs:
        check_absent(model, cfg.method)
    try:
        tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise AdapterError(
            f"cannot read {adapter_dir / ADAPTER_WEIGHTS} ({e}); the file is damaged."
        ) from None
    for cfg in configs:
        _apply(model, cfg)
    expected = adapter_state(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise AdapterError(f"the adapter in {adapter_dir} does not fit this model: {what}.")
    for name, t in tensors.items():
        if expected[name].shape != t.shape:
            raise AdapterError(
                f"adapter tensor '{name}' has shape {tuple(t.shape)} but the model expects "
                f"{tuple(expected[name].shape)}; load it onto the base model it was trained from."
            )
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t)
    return model
