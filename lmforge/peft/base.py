"""What every PEFT method shares: the record of adapters on a model, name patterns, freezing.

An adapter method attaches small modules to a model (a `LoRALinear` in place of an `nn.Linear`,
a soft prompt on the `Transformer`, key/value prefixes on a `Stack`) and records its config in
`model.peft_configs` (method name -> config). Adapter modules say which of their own parameters
are trained (`adapter_parameter_names()`); with the configs' `modules_to_save` that defines the
adapter's parameters: the ones that train, and the only ones `save_adapter` writes.

Name patterns (LoRA `targets`, `modules_to_save`) are matched against full module names such as
`decoder.layers.0.attn.q_proj`:

- a glob (`fnmatch`): `*.q_proj`, `decoder.layers.[01].*`; a pattern also matches as a suffix
  after a dot, so `q_proj` and `attn.q_proj` mean `*.q_proj` and `*.attn.q_proj`;
- `re:` then a regular expression matched against the whole name: `re:.*layers\\.(2|3)\\..*_proj`.
"""

from __future__ import annotations

import dataclasses
import re
from fnmatch import fnmatchcase
from typing import Any, Protocol

from torch import nn

from lmforge.errors import AdapterError, did_you_mean

ATTR = "peft_configs"


class AdapterConfig(Protocol):
    method: str
    modules_to_save: list[str]


def peft_configs(model: nn.Module) -> dict[str, Any]:
    """The adapter configs applied to `model`, by method ("lora", "prompt", "prefix")."""
    return getattr(model, ATTR, {})


def check_absent(model: nn.Module, method: str) -> None:
    """Refuse a method that `model` already has (each method is applied once)."""
    if method in peft_configs(model):
        raise AdapterError(
            f"this model already has a {method} adapter; apply each method once, or start "
            "from a fresh base model."
        )


def register(model: nn.Module, cfg: AdapterConfig) -> None:
    """Record that `cfg.method` was applied to `model` (refused when it already was)."""
    check_absent(model, cfg.method)
    setattr(model, ATTR, {**peft_configs(model), cfg.method: cfg})


def unregister(model: nn.Module, method: str) -> None:
    configs = dict(peft_configs(model))
    configs.pop(method, None)
    setattr(model, ATTR, configs)


def matches(name: str, pattern: str) -> bool:
    """True when module name `name` matches `pattern` (glob, dotted suffix, or `re:` regex)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatchcase(name, pattern) or fnmatchcase(name, "*." + pattern)


def match_modules(
    model: nn.Module,
    patterns: list[str],
    kind: type | tuple[type, ...] | None = None,
    what: str = "module",
) -> list[str]:
    """Names of the modules (of type `kind`, if given) that match any pattern, in model order.

    Every pattern must match at least one module; otherwise one sentence names a real one.
    """
    names = [n for n, m in model.named_modules() if n and (kind is None or isinstance(m, kind))]
    found: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if matches(n, pattern)]
        if not hits:
            example = " or ".join(dict.fromkeys([names[0], names[-1]])) if names else "(none)"
            short = {n.rsplit(".", 1)[-1] for n in names}
            raise AdapterError(
                f"{what} '{pattern}' matches no {_kind_name(kind)}"
                f"{did_you_mean(pattern.split('.')[-1].lstrip('*'), short)}; "
                f"{_kind_name(kind)}s are named like {example}."
            )
        found += [n for n in hits if n not in found]
    order = {n: i for i, n in enumerate(names)}
    return sorted(found, key=order.__getitem__)


def _kind_name(kind: type | tuple[type, ...] | None) -> str:
    if kind is nn.Linear or (isinstance(kind, tuple) and nn.Linear in kind):
        return "linear layer"
    return "module"


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Full names of the parameters the attached adapters train (and `save_adapter` writes).

    Tied parameters are listed under every name they have (the model's state dict has each).
    """
    own: set[str] = set()
    for prefix, module in model.named_modules():
        names = getattr(module, "adapter_parameter_names", None)
        if callable(names):
            own |= {f"{prefix}.{n}" if prefix else n for n in names()}
    keep = [p for cfg in peft_configs(model).values() for p in cfg.modules_to_save]
    saved = match_modules(model, keep, what="modules_to_save entry") if keep else []
    out = []
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name in own or any(name.startswith(m + ".") for m in saved):
            out.append(name)
    return out


def freeze_base(model: nn.Module) -> None:
    """requires_grad = True exactly for the adapters' parameters; every other one is frozen."""
    names = set(adapter_parameter_names(model))
    train = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in names}
    for p in model.parameters():
        p.requires_grad_(id(p) in train)


def config_from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    """Build the dataclass `cls` from a JSON dict; an unknown key gets one clear sentence."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise AdapterError(
                f"unknown {cls.__name__} key '{key}'{did_you_mean(key, fields)} in {source}; "
                "the file was not written by this version of lmforge's save_adapter."
            )
    return cls(**values)
