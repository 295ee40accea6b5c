"""What every Hugging Face family shares: a tensor-name rule and the `Family` record.

A family (gpt2, llama, bert, t5) is its entry in the family table (`lmforge.config.families`:
traits, `config.json` keys and the defaults transformers assumes) plus four small functions: what
of its `config.json` needs more than a key lookup, in and out, what else its config must satisfy,
and which Hugging Face tensor holds which lmforge tensor. The generic code in `hf.py` walks these
rules; no family is recognised by anything but its `model_type` / `architectures` entries on
import, and by its config choices on export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import ModelConfig
from lmforge.config import families as table
from lmforge.config.families import differences, unstored
from lmforge.errors import CheckpointError

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
        entry: the family's entry in the family table (traits and `config.json` keys).
        architectures: Hugging Face class name -> the lmforge heads it corresponds to.
        base_prefix: prefix of the base model's tensors inside a model with a head
            ("transformer." for GPT-2); checkpoints of the bare model (e.g. `BertModel`) omit it.
        embedding: Hugging Face name of the token embedding.
        lm_weight: Hugging Face name of the output projection that may be tied to the embedding.
        config_from_hf: (hf config, the fields read so far) -> the `ModelConfig` fields the
            table does not map.
        config_to_hf: `ModelConfig` -> the hf config keys the table does not map.
        mismatch: `ModelConfig` -> why this family cannot represent it beyond its traits, or
            None when it can.
        rules: `ModelConfig` -> the tensor rules for that config.
        ignore: regexes of Hugging Face tensors that carry nothing lmforge needs (buffers, tied
            copies, weights no lmforge head uses).
    """

    entry: table.Family
    architectures: dict[str, Heads]
    base_prefix: str
    embedding: str
    lm_weight: str
    config_from_hf: Callable[[HfConfig, dict[str, Any]], dict[str, Any]]
    config_to_hf: Callable[[ModelConfig], HfConfig]
    rules: Callable[[ModelConfig], list[Rule]]
    mismatch: Callable[[ModelConfig], str | None] = lambda cfg: None
    ignore: tuple[str, ...] = field(default=())

    @property
    def model_type(self) -> str:
        """The `model_type` of its `config.json`."""
        return self.hf.model_type

    @property
    def hf(self) -> table.HfFormat:
        """The family table's record of its `config.json`."""
        assert self.entry.hf is not None
        return self.entry.hf

    def read_config(self, hf: HfConfig, heads: Heads) -> dict[str, Any]:
        """`ModelConfig` fields of a `config.json`: the traits, the keys the table maps (the
        value, else transformers' default), the heads and special ids, then what
        `config_from_hf` reads."""
        out: dict[str, Any] = {**self.entry.traits, **self.hf.implied, "heads": heads}
        for ours, key in self.hf.fields.items():
            value = hf.get(key.name)
            out[ours] = key.default if value is None else value
        if self.hf.activation is not None:
            out["activation"] = activation_from_hf(hf, self.hf.activation, self.model_type)
        out.update(special_ids(hf, out["vocab_size"]))
        out.update(self.config_from_hf(hf, out))
        return out

    def write_config(self, cfg: ModelConfig) -> HfConfig:
        """The `config.json` of `cfg` (without `architectures`); a key that several fields map to
        (T5's `dropout_rate`) is written from the first."""
        out: HfConfig = {"model_type": self.model_type}
        for ours, key in self.hf.fields.items():
            out.setdefault(key.name, getattr(cfg, ours))
        if self.hf.activation is not None:
            out[self.hf.activation.name] = ACT_TO_HF[cfg.activation]
        out.update(self.config_to_hf(cfg))
        return out

    def why_not(self, cfg: ModelConfig) -> str | None:
        """Why this family cannot represent `cfg` (a trait differs, a field its `config.json`
        cannot store is not the derived value, or `mismatch` says why), None when it can."""
        expected = {**self.entry.traits, **unstored(cfg, set(self.hf.fields))}
        return differences(cfg, expected) or self.mismatch(cfg)

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


def activation_from_hf(hf: HfConfig, key: table.Key, model_type: str) -> str:
    """lmforge's activation for the `config.json` key that names it (e.g. "gelu_new")."""
    act = hf.get(key.name) or key.default
    if act not in ACT_FROM_HF:
        raise CheckpointError(
            f"{model_type} {key.name} '{act}' is not supported; "
            f"supported: {', '.join(sorted(ACT_FROM_HF))}."
        )
    return ACT_FROM_HF[act]


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
