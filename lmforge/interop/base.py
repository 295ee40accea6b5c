"""What every Hugging Face family shares: a tensor-name rule and the `Family` record.

A family (gpt2, llama, bert, t5) is plain data plus four small functions: how its `config.json`
maps onto `ModelConfig` and back, and which Hugging Face tensor holds which lmforge tensor. The
generic code in `hf.py` walks these rules; no family is recognised by anything but its
`model_type` / `architectures` entries on import, and by its config choices on export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import ModelConfig

HfConfig = dict[str, Any]
Heads = tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """One Hugging Face tensor and the lmforge tensor(s) it holds.

    Attributes:
        theirs: the Hugging Face name, with the base-model prefix (e.g. "transformer.h.0.ln_1.weight").
        ours: the lmforge name(s); several when Hugging Face fuses them (GPT-2's `c_attn` holds
            q, k and v stacked along the output dimension: theirs = concat(ours, dim=0)).
        transpose: Hugging Face stores the matrix as (in, out) (GPT-2's Conv1D) where
            `nn.Linear` stores (out, in).
    """

    theirs: str
    ours: tuple[str, ...]
    transpose: bool = False


def rule(theirs: str, *ours: str, transpose: bool = False) -> Rule:
    return Rule(theirs, tuple(ours), transpose)


def linear(theirs: str, ours: str, bias: bool) -> list[Rule]:
    """weight (and bias) of one linear layer: `theirs.weight` -> `ours.weight`."""
    out = [rule(f"{theirs}.weight", f"{ours}.weight")]
    if bias:
        out.append(rule(f"{theirs}.bias", f"{ours}.bias"))
    return out


def norm(theirs: str, ours: str, cfg: ModelConfig) -> list[Rule]:
    """A LayerNorm has weight and bias, an RMSNorm only a weight."""
    return linear(theirs, ours, bias=cfg.norm == "layernorm")


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model family maps onto `ModelConfig` and lmforge tensor names.

    Attributes:
        model_type: the `model_type` of its `config.json`.
        architectures: Hugging Face class name -> the lmforge heads it corresponds to.
        base_prefix: prefix of the base model's tensors inside a model with a head
            ("transformer." for GPT-2); checkpoints of the bare model (e.g. `BertModel`) omit it.
        embedding: Hugging Face name of the token embedding.
        lm_weight: Hugging Face name of the output projection that may be tied to the embedding.
        config_from_hf: (hf config, heads) -> `ModelConfig` fields.
        config_to_hf: `ModelConfig` -> hf config (without `architectures`).
        mismatch: `ModelConfig` -> why this family cannot represent it, or None when it can.
        rules: `ModelConfig` -> the tensor rules for that config.
        ignore: regexes of Hugging Face tensors that carry nothing lmforge needs (buffers, tied
            copies, weights no lmforge head uses).
    """

    model_type: str
    architectures: dict[str, Heads]
    base_prefix: str
    embedding: str
    lm_weight: str
    config_from_hf: Callable[[HfConfig, Heads], dict[str, Any]]
    config_to_hf: Callable[[ModelConfig], HfConfig]
    mismatch: Callable[[ModelConfig], str | None]
    rules: Callable[[ModelConfig], list[Rule]]
    ignore: tuple[str, ...] = field(default=())

    def architecture_for(self, heads: Heads) -> str | None:
        """The Hugging Face class whose heads are exactly `heads` (order-insensitive)."""
        for name, arch_heads in self.architectures.items():
            if set(arch_heads) == set(heads):
                return name
        return None


# ------------------------------------------------------------------ shared config helpers
ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def first_id(value: Any) -> int | None:
    """A special-token id from a config (a list of ids keeps its first)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def special_ids(hf: HfConfig, vocab_size: int) -> dict[str, int | None]:
    """bos/eos/pad/decoder-start ids, dropping ids outside the vocabulary (tiny test configs keep
    GPT-2's 50256 with a 256-token vocabulary)."""
    pad = first_id(hf.get("pad_token_id"))
    ids = {
        "bos_id": first_id(hf.get("bos_token_id")),
        "eos_id": first_id(hf.get("eos_token_id")),
        "pad_id": pad,
        "decoder_start_id": first_id(hf.get("decoder_start_token_id")),
    }
    return {k: (v if v is not None and 0 <= v < vocab_size else None) for k, v in ids.items()}


def special_ids_to_hf(cfg: ModelConfig) -> HfConfig:
    return {"bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id}


def differences(cfg: ModelConfig, **expected: Any) -> str | None:
    """'field=value (needs X)' for the first field of `cfg` that differs from `expected`."""
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
