"""`lmforge finetune --task embed`: train a sentence-embedding model on (query, positive[,
negatives]) pairs, through the one training loop, and score it by retrieval.

    model dir (e.g. imported all-MiniLM-L6-v2) + pair files (lmforge.data.pairs)
    -> batches of both sides, `same` marking repeated positives
    -> EmbeddingObjective: mean-pooled embeddings, InfoNCE with in-batch (+ hard) negatives
       or negative sampling (lmforge.objectives.embedding)
    -> fit(...) keeps the best model by validation loss
    -> retrieval scores on valid (and test): every query against the split's distinct
       positives (and negatives): recall@1/5/10 and MRR (lmforge.evaluate.retrieval)

The out dir is a plain model dir (`lmforge embed`, `lmforge index build` use it) plus
`metrics.json` with the scores before and after training.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config.train import make_train_config, split_values
from lmforge.data.pairs import Pair, encode_pairs, read_pairs
from lmforge.data.sources import read_documents
from lmforge.data.task_batches import TaskBatches
from lmforge.errors import ConfigError
from lmforge.evaluate.retrieval import retrieval_scores
from lmforge.objectives.embedding import LOSSES, EmbeddingObjective
from lmforge.recipes.embed import Embedder, last_hidden, mean_pool, pad_batch
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.train import TrainResult, fit
from lmforge.utils.fs import atomic_write_text


@dataclass
class EmbedFinetuneResult:
    out_dir: Path
    train: TrainResult
    metrics: dict[str, Any]


def pooled(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ids and mask -> (B, d) mean-pooled last hidden states (with gradients)."""
    return mean_pool(last_hidden(model, ids, mask).float(), mask)


def pair_collate(pad_id: int):
    """features -> {input_ids, attention_mask (the queries), positive_ids, positive_mask, [negative_ids,
    negative_mask], same}; `same[i, j]` is True where key j (positives, then negatives) is the
    same text as row i's positive, so it is not counted as row i's negative."""

    def collate(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        batch["input_ids"], batch["attention_mask"] = pad_batch(
            [f["query"] for f in features], pad_id
        )
        batch["positive_ids"], batch["positive_mask"] = pad_batch(
            [f["positive"] for f in features], pad_id
        )
        negatives = [n for f in features for n in f["negatives"]]
        if negatives:
            batch["negative_ids"], batch["negative_mask"] = pad_batch(negatives, pad_id)
        keys = [f["positive_text"] for f in features]
        keys += [t for f in features for t in f["negative_texts"]]
        same = [[key == f["positive_text"] for key in keys] for f in features]
        batch["same"] = torch.tensor(same, dtype=torch.bool)
        return batch

    return collate


def score_pairs(
    embed, pairs: list[Pair], ks: Sequence[int] = (1, 5, 10), extra: Sequence[str] = ()
) -> dict[str, float]:
    """Retrieval over the split: the corpus is its distinct positives and negatives (plus
    `extra` documents); query i's relevant document is its positive. Returns recall@k and MRR."""
    corpus = list(dict.fromkeys([p["positive"] for p in pairs] +
                                [n for p in pairs for n in p["negatives"]] + list(extra)))  # fmt: skip
    where = {text: i for i, text in enumerate(corpus)}
    q = embed([p["query"] for p in pairs])
    d = embed(corpus)
    scores = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T  # (Q, N) cosine
    return retrieval_scores(scores, [[where[p["positive"]]] for p in pairs], ks)


def finetune_embed(
    model_dir: str | Path,
    train: str | Path,
    out_dir: str | Path,
    *,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    epochs: float = 1.0,
    max_len: int = 128,
    temperature: float = 0.05,
    loss: str = "infonce",
    corpus: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> EmbedFinetuneResult:
    """Fine-tune the embedding model in `model_dir` on pairs (see the module docstring).

    Args:
        model_dir: an lmforge model dir (an encoder such as MiniLM, or a decoder).
        train, valid, test: pair files; without `valid`, 10% of train is held out.
        out_dir: the run dir (best model, metrics.json).
        epochs: passes over the training pairs (unless `max_steps` is given).
        max_len: tokens per text, special tokens included.
        temperature: tau of the contrastive scores.
        loss: "infonce" (in-batch softmax) or "negative-sampling".
        corpus: documents (.txt/.jsonl, as `pretrain --data`) added to the retrieval corpus of
            the valid and test scores, so queries must beat more than the split's positives.
        overrides: TrainConfig fields (lr, batch_size, max_steps, seed, ...).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}.")
    if loss not in LOSSES:
        raise ConfigError(f"unknown embedding loss '{loss}'; use {' or '.join(LOSSES)}.")
    values, model_values = split_values(overrides or {})
    if model_values:
        raise ConfigError(f"model key '{next(iter(model_values))}' cannot change in a fine-tune.")
    seed = int(values.get("seed", 0))
    train_pairs = read_pairs(train, "training")
    if valid is not None:
        valid_pairs = read_pairs(valid, "validation")
    else:
        order = torch.randperm(len(train_pairs), generator=torch.Generator().manual_seed(seed))
        n_valid = max(1, round(0.1 * len(train_pairs)))
        held = set(order[:n_valid].tolist())
        valid_pairs = [p for i, p in enumerate(train_pairs) if i in held]
        train_pairs = [p for i, p in enumerate(train_pairs) if i not in held]
    test_pairs = read_pairs(test, "test") if test is not None else None
    extra = read_documents(corpus) if corpus is not None else []

    model, tok = load_model_and_tokenizer(model_dir)
    pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    batch_size = int(values.get("batch_size", 32))
    steps = int(values.get("max_steps", max(1, math.ceil(epochs * len(train_pairs) / batch_size))))
    defaults = {"batch_size": batch_size, "lr": 2e-5, "schedule": "linear", "min_lr": 0.0,
                "warmup_steps": round(0.1 * steps), "max_steps": steps, "weight_decay": 0.01,
                "eval_every": max(1, steps // 4), "log_every": max(1, min(10, steps)),
                "keep_last": 1, "select_metric": "eval_loss", "select_mode": "min"}  # fmt: skip
    tcfg = make_train_config({**defaults, **values})
    collate = pair_collate(pad_id)
    data = TaskBatches(encode_pairs(tok, train_pairs, max_len), collate, tcfg.batch_size,
                       grad_accum=tcfg.grad_accum, seed=tcfg.seed)  # fmt: skip
    held_out = TaskBatches(encode_pairs(tok, valid_pairs, max_len), collate, tcfg.batch_size,
                           name="validation")  # fmt: skip
    objective = EmbeddingObjective(pooled, temperature, loss)

    def embedder(model_or_dir) -> Embedder:
        return Embedder(model_or_dir, max_length=max_len)

    def scores(model_or_dir) -> dict[str, dict[str, float]]:
        embed = embedder(model_or_dir)
        out = {"valid": score_pairs(embed, valid_pairs, extra=extra)}
        if test_pairs is not None:
            out["test"] = score_pairs(embed, test_pairs, extra=extra)
        return out

    before = scores(model_dir)
    out_dir = Path(out_dir)

    def save_extra(d: Path) -> None:
        tok.save(d)
        extra = Path(model_dir) / "sentence_bert_config.json"
        if extra.is_file():
            shutil.copyfile(extra, d / extra.name)

    result = fit(model, objective, data, held_out.sequential, tcfg, out_dir,
                 save_extra=save_extra, progress=progress)  # fmt: skip
    result.raise_if_interrupted()
    after = scores(out_dir)
    metrics = {"task": "embed", "loss": loss, "temperature": temperature, "steps": result.steps,
               "train_pairs": len(train_pairs), "corpus_extra": len(extra), "before": before,
               "after": after}  # fmt: skip
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return EmbedFinetuneResult(out_dir, result, metrics)
