"""The compression pipeline: prune -> distill -> quantize, each stage measured.

    MODEL_DIR (a fine-tuned classifier dir with task.json, or a causal LM dir)
      --prune--------> out/pruned      structured (FFN neurons + heads) or magnitude (masks);
                                        with prune_steps > 1 an iterative schedule: prune a step,
                                        fine-tune (distil), repeat (Zhu & Gupta's cubic sparsity)
      --distill------> out/distilled   train the pruned student on --train with the unpruned
                                        model as teacher: L = (1-a) CE + a T^2 KL (TaskObjective),
                                        full weights or LoRA (merged afterwards); masks re-applied
                                        before every forward
      --quantize-----> out/quantized   the quantized linears of `lmforge.compress.quantize`
    out/report.{json,md,png}            one row per stage (see `lmforge.compress.measure`)

Each stage dir is a normal model dir (tokenizer and task.json included) that every verb loads.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.compress import data as cdata
from lmforge.compress.embedding import quantize_embeddings
from lmforge.compress.measure import stage_row, throughput, write_report
from lmforge.compress.prune import (
    attach_masks,
    cubic_schedule,
    current_masks,
    magnitude_prune,
    remove_masks,
)
from lmforge.compress.structured import structured_prune
from lmforge.config.train import make_train_config
from lmforge.errors import ConfigError
from lmforge.models import Transformer, save_model
from lmforge.objectives.tasks import TaskObjective
from lmforge.peft import lora_modules, merge_lora, save_adapter
from lmforge.recipes.finetuned import load_finetuned, read_task_info, write_task_info
from lmforge.recipes.task_model import FinetuneConfig, apply_method
from lmforge.tokenizer import Tokenizer
from lmforge.train import fit

PRUNE_METHODS = ("structured", "magnitude", "none")
QUANT_METHODS = ("int8", "int4", "dynamic-int8", "none")


@dataclass
class CompressConfig:
    """What the pipeline does (see the module docstring).

    Attributes:
        prune: "structured", "magnitude" or "none".
        ffn_fraction, head_fraction: structured: fractions of FFN neurons / heads removed.
        sparsity: magnitude: fraction of block weights zeroed.
        scope: "layer" (same fraction in every block) or "global" (one ranking).
        importance: structured: "magnitude" or "gradient" (Michel et al., on --train batches).
        importance_batches: batches scored for gradient importance.
        prune_steps: pruning rounds (> 1: prune, fine-tune, repeat, on a cubic schedule).
        distill: train after pruning, with the unpruned model as teacher (False: no training
            after a one-step prune; plain CE between the rounds of an iterative schedule).
        method: "full" or "lora" for the training after pruning.
        epochs: passes over --train in the distillation stage (split over the rounds).
        lr, batch_size, max_steps: training settings (None: 5e-5 full / 1e-3 LoRA, 32, epochs).
        distill_alpha, distill_temperature: a and T of the distillation loss.
        quantize: "int8", "int4", "dynamic-int8" or "none"; group_size for the weight-only ones.
        quantize_embeddings: also store the token embedding as int8 rows (`compress.embedding`;
            not a table tied to the LM head).
        threads, speed_batch, speed_batches: the CPU speed measurement.
        speed_sort: time the test examples in order of length (as sentence-transformers'
            `encode` batches them: less padding per batch) instead of file order; every stage
            gets the same batches either way.
        eval_limit: score only the first N test records / held-out windows (None = all).
        seq_len: window length of a causal LM's data.
        seed: seeds training and the data order.
    """

    prune: str = "structured"
    ffn_fraction: float = 0.4
    head_fraction: float = 0.25
    sparsity: float = 0.5
    scope: str = "layer"
    importance: str = "magnitude"
    importance_batches: int = 8
    prune_steps: int = 1
    distill: bool = True
    method: str = "full"
    epochs: float = 1.0
    lr: float | None = None
    batch_size: int = 32
    max_steps: int | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    quantize: str = "none"
    group_size: int = 128
    quantize_embeddings: bool = True
    threads: int = 2
    speed_batch: int = 32
    speed_batches: int = 4
    speed_sort: bool = False
    eval_limit: int | None = None
    seq_len: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, choices in (("prune", self.prune, PRUNE_METHODS),
                                     ("quantize", self.quantize, QUANT_METHODS),
                                     ("method", self.method, ("full", "lora"))):  # fmt: skip
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got '{value}'.")
        if self.prune_steps < 1 or not self.epochs > 0:
            raise ConfigError("prune_steps must be at least 1 and epochs positive.")


@dataclass
class CompressResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    final_dir: Path
    model: Transformer  # the last stage's model, in memory (quantized linears included)


def load_plain(model_dir: str | Path) -> Transformer:
    """The model of a model dir as plain linears: a LoRA adapter is merged in; prompt and
    prefix tuning (extra tokens, no weights to prune) are refused."""
    model = load_finetuned(model_dir)
    if lora_modules(model):
        return merge_lora(model)
    if model.prompt is not None or any(getattr(m, "prefix", None) is not None
                                       for m in model.modules()):  # fmt: skip
        raise ConfigError(
            f"{model_dir} holds a prompt- or prefix-tuning adapter; compress the base model or a "
            "full / LoRA fine-tune instead."
        )
    return model


def prune_model(model: Transformer, cc: CompressConfig, fraction_of_final: float = 1.0,
                data: cdata.StageData | None = None) -> Transformer:  # fmt: skip
    """Apply the configured pruning at `fraction_of_final` of its final strength (1 = all)."""
    if cc.prune == "magnitude":
        magnitude_prune(model, cc.sparsity * fraction_of_final, cc.scope)  # type: ignore[arg-type]
        return model
    if cc.prune == "structured":
        grads = {}
        if cc.importance == "gradient":
            if data is None:
                raise ConfigError("gradient importance needs --train data.")
            grads = dict(batches=data.importance_batches(cc.importance_batches),
                         loss_fn=data.plain_objective())  # fmt: skip
        return structured_prune(
            model,
            cc.ffn_fraction * fraction_of_final,
            cc.head_fraction * fraction_of_final,
            importance=cc.importance,  # type: ignore[arg-type]
            scope=cc.scope,  # type: ignore[arg-type]
            reference=data.reference if data is not None else None,
            **grads,
        )
    return model


def train_stage(model: Transformer, teacher: Transformer | None, data: cdata.StageData,
                cc: CompressConfig, out_dir: Path, epochs: float) -> Transformer:  # fmt: skip
    """Fine-tune (distil when a teacher is given) `model` on the training data through the one
    training loop; returns the best model by the validation score, LoRA merged, masks kept."""
    masks = current_masks(model)
    fc = FinetuneConfig(task=data.task if data.task != "lm" else "sft", method=cc.method)
    if cc.method == "lora":
        shutil.rmtree(out_dir, ignore_errors=True)
        data.save_dir(model, out_dir)  # the frozen base next to the adapter files
    apply_method(model, fc)
    objective = TaskObjective(data.objective_task, data.labels, None, teacher,
                              cc.distill_alpha, cc.distill_temperature)  # fmt: skip
    train = data.train_batches(cc.batch_size, cc.seed)
    steps = cc.max_steps or max(1, math.ceil(epochs * data.n_train / cc.batch_size))
    select = ("eval_accuracy", "max") if data.task == "classify" else ("eval_loss", "min")
    tcfg = make_train_config({
        "batch_size": cc.batch_size, "max_steps": steps, "seed": cc.seed, "schedule": "linear",
        "lr": cc.lr or (1e-3 if cc.method == "lora" else 5e-5), "min_lr": 0.0,
        "warmup_steps": round(0.06 * steps), "weight_decay": 0.01, "precision": "fp32",
        "eval_every": max(1, steps // 2), "log_every": max(1, min(10, steps)), "keep_last": 1,
        "select_metric": select[0], "select_mode": select[1], "device": "cpu",
    })  # fmt: skip
    export = (lambda d: save_adapter(model, d)) if cc.method == "lora" else None
    fit(model, objective, train, data.valid_batches, tcfg, out_dir,
        save_extra=data.save_extra, export=export, progress=False).raise_if_interrupted()  # fmt: skip
    best = load_finetuned(out_dir)
    if cc.method == "lora":
        best = merge_lora(best)
    if masks:  # the mask pattern of the pruned model, kept in the merged / reloaded weights
        attach_masks(best, masks)
    return best


def _quantize(model: Transformer, cc: CompressConfig, out_dir: Path, data) -> Transformer:
    """Swap the linears for quantized ones (`lmforge.compress.quantize`), and the token
    embedding for int8 rows when asked; save a model dir that `load_model` rebuilds."""
    from lmforge.compress.quantize import quantize_model

    qmodel = quantize_model(model, method=cc.quantize, group_size=cc.group_size)
    if cc.quantize_embeddings:
        qmodel.quantization["embeddings"] = quantize_embeddings(qmodel)
    data.save_dir(qmodel, out_dir)  # save_model writes the record into config.json
    return qmodel


def compress(
    model_dir: str | Path,
    out_dir: str | Path,
    cc: CompressConfig | None = None,
    *,
    train: str | Path | None = None,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> CompressResult:
    """Run prune -> distill -> quantize on `model_dir`, measuring each stage (module docstring).

    Args:
        model_dir: a fine-tuned classifier dir (task.json) or a causal LM dir.
        out_dir: stage dirs and the report go here.
        cc: what to do.
        train, valid, test: the task's files (classifier: labelled CSV/JSONL; causal LM: text);
            train is needed to distil (and for gradient importance), test (else valid) scores
            each stage.
        log: where a line per finished stage goes.
    """
    cc = cc or CompressConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    torch.manual_seed(cc.seed)
    original = load_plain(model_dir)
    data = cdata.StageData.build(model_dir, original, read_task_info(model_dir), train, valid,
                                 test, cc)  # fmt: skip
    if (cc.distill or cc.prune_steps > 1) and train is None:
        raise ConfigError("training after pruning needs --train data; pass it or --no-distill.")
    rows: list[dict[str, Any]] = []

    def measure(stage: str, model: Transformer, where: Path) -> None:
        model.eval()
        speed = throughput(lambda b: model(**b), data.speed_batches(), data.speed_units,
                           cc.threads)  # fmt: skip
        rows.append(stage_row(stage, model, where, data.quality(model), speed, data.speed_unit))
        write_report(rows, out_dir, f"{model_dir.name}: compression")
        log(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items()
                                     if k not in ("model_dir", "load_average")))  # fmt: skip

    measure("original", original, model_dir)
    model, final_dir = load_plain(model_dir), model_dir
    teacher = original if cc.distill else None
    if cc.prune != "none":
        schedule = cubic_schedule(1.0, cc.prune_steps)
        for i, strength in enumerate(schedule):
            model = prune_model(model, cc, strength, data)
            if i < len(schedule) - 1:  # recover before the next round
                model = train_stage(model, teacher, data, cc, out_dir / f"round-{i + 1}",
                                    cc.epochs / cc.prune_steps)  # fmt: skip
        final_dir = out_dir / "pruned"
        data.save_dir(model, final_dir)
        measure("pruned", model, final_dir)
    if cc.distill:
        epochs = cc.epochs / cc.prune_steps if cc.prune != "none" else cc.epochs
        model = train_stage(model, teacher, data, cc, out_dir / "distill-run", epochs)
        remove_masks(model)
        final_dir = out_dir / "distilled"
        data.save_dir(model, final_dir)
        measure("distilled", model, final_dir)
    remove_masks(model)
    if cc.quantize != "none":
        final_dir = out_dir / "quantized"
        model = _quantize(model, cc, final_dir, data)
        measure(f"quantized ({cc.quantize})", model, final_dir)
    return CompressResult(out_dir, rows, final_dir, model)


def prune_to_dir(
    model_dir: str | Path, out_dir: str | Path, cc: CompressConfig, *, train=None
) -> tuple[int, int]:
    """Prune the model in `model_dir` as `cc` says (no training) and write it to `out_dir`, a
    normal model dir (tokenizer and task.json carried over). Returns the nonzero parameter
    counts (before, after)."""
    from lmforge.compress.measure import count_parameters

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if cc.prune == "none":
        raise ConfigError("nothing to do with --method none; choose structured or magnitude.")
    if cc.importance == "gradient" and train is None:
        raise ConfigError("gradient importance needs data; pass --train.")
    model = load_plain(model_dir)
    info = read_task_info(model_dir)
    data = None
    if cc.prune == "structured" and cc.importance == "gradient":
        data = cdata.StageData.build(model_dir, model, info, train, None, train, cc)
    before = count_parameters(model)[1]
    model = prune_model(model, cc, 1.0, data)
    remove_masks(model)
    save_model(model, out_dir)
    Tokenizer.load(model_dir).save(out_dir)
    if info is not None:
        write_task_info(out_dir, info)
    return before, count_parameters(model)[1]
