"""Fine-tuned model dirs: load one (adapter included), run it on labelled records, score it.

A fine-tuned model dir is a model dir (`config.json`, `model.safetensors`, tokenizer files) plus

    task.json                 {"format": "lmforge-task", "task", "labels" (id -> name), "method",
                              "max_len", "base_model"}
    adapter_config.json,      for PEFT methods (lora, prompt-tuning, prefix-tuning): the adapter,
    adapter.safetensors       while model.safetensors holds the frozen base (+ the new head's
                              initial weights, which the adapter's copy replaces)

`load_finetuned` gives the ready model for either layout; `lmforge evaluate` and `generate` can
load any model dir through it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.data.task_batches import TaskBatches, collate_fn, encode
from lmforge.data.tasks import check_labels, read_task_file, record_labels
from lmforge.errors import CheckpointError
from lmforge.evaluate.metrics import classification_report, entity_scores
from lmforge.models import Transformer, load_model
from lmforge.objectives.lm import IGNORE
from lmforge.objectives.tasks import TaskObjective, model_inputs
from lmforge.peft import is_adapter_dir, load_adapter
from lmforge.tokenizer import Tokenizer
from lmforge.train import evaluate_loss
from lmforge.utils.fs import atomic_write_text
from lmforge.utils.progress import bar

TASK_FILE = "task.json"
FORMAT = "lmforge-task"


def write_task_info(out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write task.json (task, label names, method, max_len) into a model dir."""
    path = Path(out_dir) / TASK_FILE
    atomic_write_text(path, json.dumps({"format": FORMAT, "version": 1, **info}, indent=2) + "\n")
    return path


def read_task_info(model_dir: str | Path) -> dict[str, Any] | None:
    """task.json of a fine-tuned model dir, or None for a plain model dir."""
    path = Path(model_dir) / TASK_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e.msg}); re-run the fine-tune."
        ) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lmforge task file; remove it or re-run.")
    return info


def load_finetuned(model_dir: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """The model of a model dir, with its adapter applied when the dir holds one (PEFT runs);
    in eval mode. A plain model dir loads as `lmforge.models.load_model` loads it."""
    model = load_model(model_dir, device)
    if is_adapter_dir(model_dir):
        load_adapter(model, model_dir)
        model.to(device)
    return model.eval()


def load_model_and_tokenizer(model_dir: str | Path) -> tuple[Transformer, Tokenizer]:
    """`load_finetuned` and the tokenizer of a model dir, cached while its weight files
    (model and adapter) are unchanged, so repeated calls from a notebook load once."""
    model_dir = Path(model_dir)
    stamps = tuple(
        p.stat().st_mtime_ns if p.exists() else 0
        for p in (model_dir / "model.safetensors", model_dir / "adapter.safetensors")
    )
    return _load_cached(str(model_dir.resolve()), stamps)


@lru_cache(maxsize=2)
def _load_cached(model_dir: str, stamps: tuple[int, ...]) -> tuple[Transformer, Tokenizer]:
    return load_finetuned(model_dir), Tokenizer.load(model_dir)


def pad_id_of(tokenizer: Tokenizer, model: Transformer) -> int:
    """The padding id: the tokenizer's, the model's, else EOS, else 0 (masked out anyway)."""
    for value in (tokenizer.pad_id, model.cfg.pad_id, tokenizer.eos_id):
        if value is not None:
            return value
    return 0


def batches_for(
    task: str, features, tokenizer: Tokenizer, model: Transformer, batch_size: int, **kw
) -> TaskBatches:
    cfg = model.cfg
    collate = collate_fn(task, pad_id_of(tokenizer, model), cfg.eos_id, cfg.decoder_start_id)
    return TaskBatches(features, collate, batch_size, **kw)


@torch.no_grad()
def score_records(
    model: Transformer,
    tokenizer: Tokenizer,
    info: dict[str, Any],
    records: list[dict[str, Any]],
    *,
    split: str = "test",
    batch_size: int = 32,
    warn: bool = True,
    generate_limit: int = 200,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model on labelled records and score it (JSON-ready).

    classify: `classification_report` over the training labels, plus `loss` (mean CE);
    tokens:   `entity_scores` as `entity_precision/recall/f1`, `token_acc` (share of words tagged
              right; words past the length limit count as tagged "O") and `loss`;
    qa, choice: `lmforge.recipes.qa_scores` (SQuAD exact match / F1; accuracy);
    sft, seq2seq: `loss` (mean NLL of the response/target tokens), `ppl` = exp(loss), `token_acc`,
              and for the first `generate_limit` records (0 = none) the scores of greedy outputs
              (`lmforge.evaluate.generation.generation_report`: bleu, chrf, rouge1/2/L,
              exact_match, f1 on 0-100, samples).
    `warn=False` skips the truncation warning (for a split already warned about); `progress`
    shows a bar (with ETA) over the batches.
    """
    task, names = info["task"], list(info.get("labels") or [])
    ids = {name: i for i, name in enumerate(names)}
    features = encode(task, tokenizer, records, ids, info["max_len"], split, warn=warn,
                      doc_stride=int(info.get("doc_stride", 128)))  # fmt: skip
    data = batches_for(task, features, tokenizer, model, batch_size, name=split)
    device = next(model.parameters()).device
    model.eval()
    if task in ("qa", "choice"):
        from lmforge.recipes.qa_scores import score_qa_or_choice

        return score_qa_or_choice(model, info, records, features, data.sequential())
    n_batches = -(-len(features) // batch_size)
    batches = bar(data.sequential(), n_batches, f"scoring {split}", enabled=progress)
    if task in ("sft", "seq2seq"):
        ev = evaluate_loss(model, TaskObjective(task), batches, device)
        loss = ev["eval_loss"]
        out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "token_acc": ev["eval_token_acc"]}
        if generate_limit:
            from lmforge.evaluate.generation import generation_report

            out.update(generation_report(model, tokenizer, task, records, info["max_len"],
                                         limit=generate_limit, batch_size=batch_size))  # fmt: skip
        return out
    preds: list[Any] = []
    total, n = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**model_inputs(batch)).logits.float()
        labels = batch["labels"]
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum"))  # fmt: skip
        n += int((labels != IGNORE).sum())
        guess = logits.argmax(-1)
        if task == "classify":
            preds += [names[i] for i in guess.tolist()]
        else:
            for row, row_labels in zip(guess.tolist(), labels.tolist(), strict=True):
                preds.append(
                    [names[p] for p, t in zip(row, row_labels, strict=True) if t != IGNORE]
                )
    loss = total / max(n, 1)
    if task == "classify":
        return {**classification_report(record_labels(records, task), preds, names), "loss": loss}
    true = [r["tags"] for r in records]
    pred = [p + ["O"] * (len(t) - len(p)) for p, t in zip(preds, true, strict=True)]
    scores = entity_scores(true, pred)
    words = sum(len(t) for t in true)
    right = sum(a == b for t, p in zip(true, pred, strict=True) for a, b in zip(t, p, strict=True))
    return {
        "entity_precision": scores["precision"],
        "entity_recall": scores["recall"],
        "entity_f1": scores["f1"],
        "token_acc": right / words,
        "loss": loss,
        **{k: scores[k] for k in ("n_true", "n_pred", "n_correct", "per_type")},
    }


def evaluate_finetuned(
    model_dir: str | Path,
    data: str | Path,
    *,
    report_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    explain: int = 5,
) -> tuple[dict[str, Any], list[Path]]:
    """Score the fine-tuned model in `model_dir` on a labelled file and write a report.

    The report (`<data stem>-report.md` and `.json`, and `<data stem>-confusion.png` for
    classify) goes to `report_dir`, by default the model dir (the run dir of `lmforge finetune`;
    the data file's folder may be read-only or shared, so nothing is written there). For classify,
    the `explain` most confident errors get integrated-gradients saliency (`<data stem>-saliency.*`,
    a section of the report); 0 skips it.

    Returns:
        (scores, report paths).
    """
    from lmforge.evaluate.report import write_report

    info = read_task_info(model_dir)
    if info is None:
        raise CheckpointError(
            f"{model_dir} has no {TASK_FILE}, so it is not a fine-tuned model; pass the --out "
            "directory of `lmforge finetune`."
        )
    task = info["task"]
    records = read_task_file(data, task, "evaluation")
    if task in ("classify", "tokens"):
        check_labels(record_labels(records, task), info["labels"], "evaluation", data,
                     "label" if task == "classify" else "tag")  # fmt: skip
    model = load_finetuned(model_dir, device)
    tokenizer = Tokenizer.load(model_dir)
    scores = score_records(model, tokenizer, info, records, split="evaluation",
                           batch_size=batch_size)  # fmt: skip
    data = Path(data)
    out = Path(report_dir) if report_dir is not None else Path(model_dir)
    title = f"{Path(model_dir).name} on {data.name}"
    extra, explained = "", []
    if task == "classify" and explain > 0:
        from lmforge.recipes.inspect import explain_worst_errors

        extra, explained = explain_worst_errors(model, tokenizer, info, records, out, data.stem,
                                                k=explain)  # fmt: skip
    paths = [*write_report(scores, task, out, data.stem, title, extra), *explained]
    atomic_write_text(out / f"{data.stem}-report.json", json.dumps(scores, indent=2) + "\n")
    return scores, [*paths, out / f"{data.stem}-report.json"]
