"""Fine-tuning a pretrained model on labelled data, through the one training loop.

    base model dir --(heads replaced for the task, base weights loaded, new head initialised)--> model
    train/valid/test files --(lmforge.data.tasks: checked records, label set)--> records
        --(lmforge.data.task_batches: token ids, cut with a counted warning)--> seekable batches
    method: full | last-n (freeze_all_but_last) | lora | prompt-tuning | prefix-tuning
    objective: TaskObjective (cross-entropy, class weights, distillation from a teacher)
    fit(...)  -> the best model by a validation metric (macro-F1, entity F1 or loss), early stopping
    best model on valid (and test) -> metrics.json, <split>-report.md (+ confusion PNG)

The out dir is a model dir with `task.json` (task, label names). For full and last-n it holds the
whole fine-tuned model; for PEFT methods it holds the frozen base (with the new head's initial
weights) plus the adapter files (`load_finetuned` applies them), and for LoRA also `merged/`, a
plain model dir with the update folded in.

`finetune()` is what `lmforge finetune` calls; a notebook can call it the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.compress.quantize import prepare_quantized
from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig, make_train_config, split_values
from lmforge.data.task_batches import encode
from lmforge.data.tasks import check_labels, label_names, read_task_file, record_labels
from lmforge.errors import CheckpointError, ConfigError, DataError, LmforgeError
from lmforge.evaluate.metrics import bio_spans
from lmforge.models import Transformer, is_model_dir, save_model
from lmforge.objectives.tasks import TaskObjective, balanced_weights
from lmforge.peft import merge_lora, save_adapter, trainable_report
from lmforge.recipes.finetuned import batches_for, load_finetuned, score_records, write_task_info
from lmforge.recipes.task_model import (
    DEFAULT_LR,
    METHODS,
    NEW_HEAD_TASKS,
    PEFT_METHODS,
    RUNTIME_MODEL_KEYS,
    FinetuneConfig,
    apply_method,
    load_base,
    load_teacher,
    task_config,
)
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainResult, fit
from lmforge.utils.device import resolve_device
from lmforge.utils.fs import RUN_MARKER, atomic_write_text

__all__ = ["METHODS", "FinetuneConfig", "FinetuneResult", "finetune"]


@dataclass
class FinetuneResult:
    out_dir: Path
    train: TrainResult
    metrics: dict[str, Any]  # what metrics.json holds
    labels: list[str]
    model_config: ModelConfig
    train_config: TrainConfig
    trainable: str  # "trainable 1.2K of 1.1M parameters (0.11%)"


# --------------------------------------------------------------------------- the recipe
def _select(fc: FinetuneConfig, tags: list[str]) -> tuple[str, str]:
    name = fc.select_metric
    if name is None:
        bio = any(t[:2] in ("B-", "I-") for t in tags)
        name = {
            "classify": "macro_f1",
            "tokens": "entity_f1" if bio else "token_acc",
            "choice": "accuracy",
        }.get(fc.task, "loss")
    name = name if name.startswith("eval_") else f"eval_{name}"
    return name, "min" if name.endswith(("loss", "ppl")) else "max"


def _train_config(fc, values: dict[str, Any], n_train: int, select: tuple[str, str]):
    batch, accum = int(values.get("batch_size", 16)), int(values.get("grad_accum", 1))
    per_epoch = max(1, math.ceil(n_train / max(1, batch * accum)))
    steps = int(values.get("max_steps", max(1, math.ceil(fc.epochs * per_epoch))))
    defaults = {
        "batch_size": batch,
        "lr": DEFAULT_LR[fc.method],
        "min_lr": 0.0,
        "schedule": "linear",
        "weight_decay": 0.01,
        "warmup_steps": round(0.06 * steps),
        "max_steps": steps,
        "eval_every": per_epoch,
        "log_every": max(1, min(10, per_epoch)),
        "keep_last": 1,
        "select_metric": select[0],
        "select_mode": select[1],
        "patience": fc.patience,
        "valid_fraction": 0.1,
    }
    return make_train_config({**defaults, **values})


def _hold_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    if len(records) < 2:
        raise DataError("the training file has one example, too few to hold any out; add --valid.")
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(records))
    n_valid = min(len(records) - 1, max(1, round(fraction * len(records))))
    held = set(order[:n_valid].tolist())
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def finetune(
    model_dir: str | Path,
    train: str | Path,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune the model in `model_dir` on a labelled file (see the module docstring).

    Args:
        model_dir: a pretrained lmforge model dir (or one made by `lmforge convert --from-hf`).
        train, valid, test: CSV/TSV/JSONL/JSON files with the task's columns; without `valid`,
            `valid_fraction` (default 0.1) of the training examples are held out.
        out_dir: the run dir (best model, task.json, metrics.jsonl, metrics.json, reports).
        config: task, method and their options.
        overrides: {"key": value} for TrainConfig fields (lr, batch_size, max_steps, ...) and
            the model's dropout / attn_dropout.
        resume: continue from the newest checkpoint in out_dir/checkpoints.
        progress: show a progress bar.
    """
    fc = config or FinetuneConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not is_model_dir(model_dir):
        raise CheckpointError(
            f"{model_dir} is not an lmforge model dir (it needs config.json and "
            "model.safetensors); pass a pretrained run dir or one made by `lmforge convert`."
        )
    train_values, model_values = split_values(overrides or {})
    wrong = sorted(set(model_values) - RUNTIME_MODEL_KEYS)
    if wrong:
        raise ConfigError(
            f"model key '{wrong[0]}' cannot change in a fine-tune (the weights fix it); only "
            "dropout and attn_dropout can."
        )
    if fc.dropout is not None:
        model_values.setdefault("dropout", fc.dropout)
    seed = int(train_values.get("seed", 0))
    base = ModelConfig.from_dir(model_dir)
    task_config(base, fc.task, 2, str(model_dir))  # a base unfit for the task fails before reading
    cut = train_values.get("seq_len") or fc.max_len or base.max_seq_len
    if cut > base.max_seq_len:
        raise ConfigError(
            f"max_len={cut} is longer than the model's max_seq_len={base.max_seq_len}; lower it."
        )
    tok = Tokenizer.load(model_dir)

    train_records = read_task_file(train, fc.task, "training")
    if valid is not None:
        valid_records = read_task_file(valid, fc.task, "validation")
    else:
        fraction = float(train_values.get("valid_fraction", 0.1))
        train_records, valid_records = _hold_out(train_records, fraction, seed)
    test_records = read_task_file(test, fc.task, "test") if test is not None else None
    if fc.augment:  # EDA copies of the training examples only (lmforge.recipes.augment)
        from lmforge.recipes.augment import augment_training

        if fc.task != "classify":
            raise ConfigError(f"--augment works with --task classify, not {fc.task}.")
        train_records = augment_training(train_records, fc.augment, model_dir, seed)
    names: list[str] = []
    if fc.task in ("classify", "tokens"):
        what = "label" if fc.task == "classify" else "tag"
        names = label_names(record_labels(train_records, fc.task), tags=fc.task == "tokens")
        if fc.task == "classify" and len(names) < 2:
            raise DataError(
                f"the training file {train} has the single label '{names[0]}'; a classifier "
                "needs examples of at least two labels."
            )
        for records, split, path in ((valid_records, "validation", valid or train),
                                     (test_records, "test", test)):  # fmt: skip
            if records is not None:
                check_labels(record_labels(records, fc.task), names, split, path, what)

    mcfg = task_config(base, fc.task, max(len(names), 1), str(model_dir)).replace(**model_values)
    ids = {name: i for i, name in enumerate(names)}
    train_features = encode(fc.task, tok, train_records, ids, cut, "training",
                            doc_stride=fc.doc_stride)  # fmt: skip
    tcfg = _train_config(fc, train_values, len(train_features), _select(fc, names))
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)

    torch.manual_seed(tcfg.seed)
    model = Transformer(mcfg)
    if mcfg.quantization:  # QLoRA-style: the quantized base stays frozen under an adapter
        if fc.method not in PEFT_METHODS:
            raise ConfigError(
                f"{model_dir} is quantized ({mcfg.quantization['method']}), so its weights "
                f"cannot train with --method {fc.method}; use --method lora (or fine-tune the "
                "floating-point model)."
            )
        prepare_quantized(model, mcfg.quantization, missing_ok=True)
        mcfg = model.cfg = mcfg.replace(quantization=model.quantization)  # the task's modules
    load_base(model, model_dir, new_head=fc.task in NEW_HEAD_TASKS)
    info = {"task": fc.task, "labels": names, "method": fc.method, "max_len": cut,
            "base_model": str(model_dir)}  # fmt: skip
    if fc.task == "qa":  # how `score_records` windows contexts and picks answers
        info.update(doc_stride=fc.doc_stride, max_answer_len=fc.max_answer_len,
                    unanswerable=any(not r["answers"]["text"] for r in train_records))  # fmt: skip

    def save_extra(d: Path) -> None:
        tok.save(d)
        write_task_info(d, info)

    export = None
    # a run that fails before training leaves no partial dir (the --out check's marker aside,
    # the folder is this run's own when nothing else is in it)
    fresh = not out_dir.exists() or {p.name for p in out_dir.iterdir()} <= {RUN_MARKER}
    if fc.method in PEFT_METHODS:  # the frozen base once; the adapter at every best evaluation
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, out_dir)
        save_extra(out_dir)

        def export(d: Path) -> None:
            save_adapter(model, d)

    try:
        apply_method(model, fc)
    except LmforgeError:
        if fresh:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    trainable = trainable_report(model).splitlines()[0]

    weights = None
    if fc.class_weights == "balanced":
        label_ids = [ids[v] for v in record_labels(train_records, fc.task)]
        weights = torch.tensor(balanced_weights(label_ids, len(names)))
    elif fc.class_weights is not None:
        if len(fc.class_weights) != len(names):
            raise ConfigError(
                f"class_weights has {len(fc.class_weights)} numbers but there are {len(names)} "
                f"labels ({', '.join(names)}); give one weight per label, in that order."
            )
        weights = torch.tensor([float(w) for w in fc.class_weights])
    teacher = load_teacher(fc.teacher, fc, tok, names, mcfg) if fc.teacher else None
    objective = TaskObjective(fc.task, names, weights, teacher, fc.distill_alpha,
                              fc.distill_temperature, bio_spans,
                              chunk_vocab=tcfg.chunked_ce_vocab)  # fmt: skip

    data = batches_for(fc.task, train_features, tok, model, tcfg.batch_size,
                       grad_accum=tcfg.grad_accum, seed=tcfg.seed)  # fmt: skip
    valid_features = encode(fc.task, tok, valid_records, ids, cut, "validation",
                            doc_stride=fc.doc_stride)  # fmt: skip
    held_out = batches_for(fc.task, valid_features, tok, model, tcfg.batch_size, name="validation")
    result = fit(model, objective, data, held_out.sequential, tcfg, out_dir, resume=resume,
                 save_extra=save_extra, export=export, progress=progress)  # fmt: skip
    result.raise_if_interrupted()

    if _rank() != 0:  # under torchrun, rank 0 scores and writes the reports
        return FinetuneResult(out_dir, result, {}, names, mcfg, tcfg, trainable)
    device = resolve_device(tcfg.device)
    best = load_finetuned(out_dir, device)
    if fc.method == "lora" and not mcfg.quantization:  # integer weights take no merge
        merged = merge_lora(load_finetuned(out_dir))
        save_model(merged, out_dir / "merged")
        tok.save(out_dir / "merged")
        write_task_info(out_dir / "merged", {**info, "method": "lora (merged)"})
    metrics = _final_metrics(best, tok, info, valid_records, test_records, tcfg.batch_size)
    metrics.update(
        task=fc.task, method=fc.method, labels=names, steps=result.steps,
        stopped_early=result.stopped_early, select_metric=tcfg.select_metric,
        best_score=result.best_score, best_step=_best_step(out_dir, tcfg, result.best_score),
        train_examples=len(train_features), trainable=trainable, finetune_config=asdict(fc),
    )  # fmt: skip
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    split = "test" if test_records is not None else "valid"
    from lmforge.evaluate.report import write_report

    write_report(metrics[split], fc.task, out_dir, split, f"{out_dir.name}: {split} ({fc.task})")
    from lmforge.evaluate.card import finish_run

    finish_run(out_dir)  # hardware.json + report.html
    return FinetuneResult(out_dir, result, metrics, names, mcfg, tcfg, trainable)


def _rank() -> int:
    """This process's rank under torchrun (its RANK), 0 otherwise; `fit` has closed its process
    group by the time the reports are written."""
    return int(os.environ.get("RANK", "0"))


def _final_metrics(model, tok, info, valid_records, test_records, batch_size) -> dict[str, Any]:
    # the validation split already had its truncation warning when it was batched for `fit`
    out = {"valid": score_records(model, tok, info, valid_records, split="validation",
                                  batch_size=batch_size, warn=False)}  # fmt: skip
    if test_records is not None:
        out["test"] = score_records(model, tok, info, test_records, split="test",
                                    batch_size=batch_size)  # fmt: skip
    return out


def _best_step(out_dir: Path, cfg: TrainConfig, score: float | None) -> int | None:
    """The step of the evaluation that gave the best score (from metrics.jsonl)."""
    path = out_dir / "metrics.jsonl"
    if score is None or not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get(cfg.select_metric) == score:
            return record.get("step")
    return None
