"""`TrainConfig`: the knobs of the one training loop, and how a run's config is assembled
from a preset, a YAML/JSON file and `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from lmforge.config.model import ModelConfig
from lmforge.errors import ConfigError, did_you_mean

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Strategy = Literal["none", "ddp", "fsdp"]
NonFinite = Literal["skip", "halt"]
Schedule = Literal["cosine", "linear", "constant"]
SelectMode = Literal["min", "max"]


@dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class TrainConfig:
    """Training hyper-parameters (stored as `train_config.json` in the run dir).

    Attributes:
        max_steps: optimizer steps in the run.
        batch_size: sequences per micro-batch; grad_accum micro-batches make one step.
        grad_accum: micro-batches whose gradients add up to one optimizer step.
        seq_len: tokens per training sequence (default: the model's max_seq_len).
        lr: peak learning rate (after warm-up).
        min_lr: the floor the schedule decays to.
        warmup_steps: linear warm-up from 0 to lr.
        schedule: decay after warm-up ("cosine", "linear" or "constant").
        weight_decay: AdamW decay on matrices (never on norms, biases or embeddings).
        beta1, beta2: AdamW's decay rates of the gradient's first and second moments.
        eps: AdamW's term added to the root of the second moment.
        grad_clip: clip the global gradient norm to this (0 = off).
        eval_every: evaluate (and checkpoint) every this many steps.
        eval_batches: micro-batches of held-out data per evaluation.
        log_every: write a metrics line every this many steps.
        patience: stop after this many evaluations without improvement (None = never).
        select_metric: the held-out number that picks the best model and drives `patience`:
            any `eval_*` key an evaluation logs (`eval_loss`, or say `eval_accuracy`).
        select_mode: "min" (a loss: lower is better) or "max" (accuracy, F1).
        precision: "auto" (bf16 autocast on a GPU that has bf16, fp32 on a CPU), "fp32",
            "bf16", "fp16". On a CPU with AMX (Intel Xeon 4th generation and later) "bf16"
            trains a 135M Llama about 1.6x faster than fp32 (BENCHMARKS.md, "bf16 on the
            CPU's AMX units").
        device: "auto", "cpu", "cuda", "cuda:1", ...
        compile: wrap the model in torch.compile (inductor fuses the norms, activations and
            RoPE around the matrix multiplies; fp32 on a shared 2-core CPU: 1.6-1.8x Hugging
            Face's tokens/s on the SmolLM2-135M shape against 1.0x eager, but slower than
            eager on gpt-mini; the first steps compile for minutes).
        seed: seeds weights, data order and dropout.
        valid_fraction: held-out share of the documents.
        vocab_size: tokenizer vocabulary when the run trains its tokenizer.
        threads: CPU threads for PyTorch (None = PyTorch's default). On cores busy with other
            work fewer threads can be faster: threads=1 trained gpt-mini 1.4x faster than 2
            threads on 2 cores at load average 10.
        strategy: "none", "ddp" (DistributedDataParallel) or "fsdp" (FSDP2), under torchrun.
        nonfinite: on a NaN/inf loss or gradient norm, "skip" the step (weights, optimizer and
            schedule untouched, the batch is passed over) or "halt". With fused AdamW (the
            default) the step is skipped on the device and recorded (or halted on) at the next
            log step, so the steps in between run one schedule position ahead.
        max_skips: halt after this many consecutive skipped steps.
        keep_last: training checkpoints kept (the newest k), besides the best model.
        save_every: write a training checkpoint every this many steps (default: eval_every).
        activation_checkpointing: recompute block activations in backward to save memory.
        deterministic: ask PyTorch for deterministic kernels (bit-exact resume on CPU).
        chunked_ce_vocab: from this vocabulary size on, the causal-LM and sft losses apply the
            LM head over chunks of rows, never holding the batch's full float32 logits (0 =
            never, the default: it saves 3 x tokens x vocabulary x 4 bytes but measured ~10%
            slower for the LM head on a 2-core CPU; try 32768 where memory is short).
    """

    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    patience: int | None = None
    select_metric: str = "eval_loss"
    select_mode: SelectMode = "min"
    precision: Precision = "auto"
    device: str = "auto"
    compile: bool = False
    seed: int = 0
    valid_fraction: float = 0.05
    vocab_size: int = 8192
    threads: int | None = None
    strategy: Strategy = "none"
    nonfinite: NonFinite = "skip"
    max_skips: int = 5
    keep_last: int = 2
    save_every: int | None = None
    activation_checkpointing: bool = False
    deterministic: bool = False
    chunked_ce_vocab: int = 0

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "eval_every",
            "eval_batches",
            "log_every",
            "max_skips",
            "keep_last",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(
                f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}."
            )
        if self.chunked_ce_vocab < 0:
            raise ConfigError(
                f"chunked_ce_vocab must be at least 0 (0 = never), got {self.chunked_ce_vocab}."
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be at least 0, got {self.warmup_steps}.")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}.")
        if not self.select_metric.startswith("eval_"):
            raise ConfigError(
                f"select_metric must name an evaluation number such as eval_loss or "
                f"eval_accuracy, got '{self.select_metric}'."
            )
        if self.seq_len is not None and self.seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2, got {self.seq_len}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def parse_value(text: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001, 'true' -> True, 'null' -> None, '[a, b]' -> list; YAML rules."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['lr=3e-4', 'model.n_layer=4'] -> {'lr': 0.0003, 'model.n_layer': 4}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. lr=3e-4).")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON run config: train keys at the top, model keys under `model:`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a YAML or JSON file.")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be parsed ({e}).") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not UTF-8 text; pass a YAML or JSON file."
        ) from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to be a config.") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}).") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values.")
    return values


def split_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort flat keys into (train, model) values; `model.x` and a `model:` mapping go to model.

    A key that is neither gets one sentence naming it and the closest valid key.
    """
    train: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value in values.items():
        if key == "model" and isinstance(value, dict):
            model.update(value)
        elif key.startswith("model."):
            model[key[len("model.") :]] = value
        elif key in TRAIN_FIELDS:
            train[key] = value
        elif key in MODEL_FIELDS:
            model[key] = value
        else:
            raise ConfigError(
                f"unknown config key '{key}'{did_you_mean(key, TRAIN_FIELDS | MODEL_FIELDS)}; "
                "train keys are listed by `lmforge pretrain --help`, model keys by `lmforge presets`."
            )
    return train, model


def make_train_config(values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"train config key '{loc}': {err['msg']}.") from None


def train_keys() -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every `TrainConfig` field, in field order, read from the
    dataclass itself (defaults) and its docstring's Attributes section (meanings).

    An entry naming several keys ("lr, min_lr: ...") gives each of them its meaning.
    """
    meanings: dict[str, str] = {}
    doc = (TrainConfig.__doc__ or "").split("Attributes:", 1)[-1]
    current: list[str] = []
    for line in doc.splitlines():
        text = line.strip()
        if not text:
            continue
        head, sep, rest = text.partition(": ")
        names = [n.strip() for n in head.split(",")]
        if sep and line.startswith(" " * 8) and not line.startswith(" " * 12):
            if all(n.isidentifier() for n in names):
                current = names
                for n in names:
                    meanings[n] = rest
                continue
        for n in current:  # a continuation line of the current entry
            meanings[n] += " " + text
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default
        if default is None or isinstance(default, bool):  # as a key=value override is written
            default = json.dumps(default)
        rows.append((f.name, str(default), meanings.get(f.name, "")))
    return rows


def train_keys_help() -> str:
    """The train keys as help text for `lmforge pretrain --help` and `lmforge finetune --help`."""
    lines = [
        "Train keys (pass as key=value, or at the top of a --config YAML; model keys: "
        "`lmforge presets NAME`):",
        "",
    ]
    lines += [f"{key} = {default}: {meaning}" for key, default, meaning in train_keys()]
    return "\n\n".join(lines)


def train_keys_markdown() -> str:
    """The train keys as a Markdown table (docs/train-keys.md is this text)."""
    lines = [
        "# Train keys",
        "",
        "Every field of `TrainConfig` (`lmforge/config/train.py`), its default and meaning. Pass "
        "them as `key=value` to `lmforge pretrain` or `lmforge finetune`, or at the top of a "
        "`--config` YAML/JSON file (model keys go under `model:`). Generated from the dataclass "
        "by `lmforge.config.train.train_keys_markdown()`; `lmforge pretrain --help` shows the "
        "same list.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for key, default, meaning in train_keys():
        cell = meaning.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {cell} |")
    return "\n".join(lines) + "\n"
