"""The data a compression run trains and scores on: labelled records for a fine-tuned classifier
(or tagger) dir, plain text windows for a causal LM."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.config import ModelConfig
from lmforge.data import read_documents
from lmforge.data.lm import TokenWindows, tokens_from_documents
from lmforge.data.task_batches import encode
from lmforge.data.tasks import read_task_file
from lmforge.errors import ConfigError
from lmforge.models import Transformer, save_model
from lmforge.objectives import causal_lm_loss
from lmforge.objectives.tasks import TaskObjective
from lmforge.recipes.finetuned import batches_for, score_records, write_task_info
from lmforge.tokenizer import Tokenizer
from lmforge.train import evaluate_loss


@dataclass
class StageData:
    """Training, validation, test and speed batches of one model dir's task.

    task: "classify" / "tokens" (a fine-tuned dir's task.json) or "lm" (a causal LM)."""

    task: str
    tokenizer: Tokenizer
    reference: ModelConfig  # the unpruned sizes that fractions refer to
    info: dict[str, Any] | None
    model: Transformer
    batch_size: int
    eval_limit: int | None
    speed_batch: int
    speed_count: int
    seq_len: int = 128
    speed_sort: bool = False
    train: Any = None
    valid: Any = None
    test: Any = None
    n_train: int = 0
    labels: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model_dir: Path, model: Transformer, info, train, valid, test, cc):
        tok = Tokenizer.load(model_dir)
        if info is not None:
            task = info["task"]
            if task not in ("classify", "tokens"):
                raise ConfigError(
                    f"{model_dir} is a fine-tuned {task} model; compression handles classify "
                    "and tokens models and causal LMs."
                )
        elif model.cfg.arch == "decoder" and "lm" in model.cfg.heads:
            task = "lm"
        else:
            raise ConfigError(
                f"{model_dir} is neither a fine-tuned classifier (task.json) nor a causal LM; "
                "fine-tune it first with `lmforge finetune`."
            )
        if test is None and valid is None:
            raise ConfigError("pass --test (or --valid) data to score each stage.")
        self = cls(task, tok, model.cfg, info, model, cc.batch_size, cc.eval_limit,
                   cc.speed_batch, cc.speed_batches, min(cc.seq_len, model.cfg.max_seq_len),
                   cc.speed_sort)  # fmt: skip
        if info is not None:
            self.labels = list(info["labels"])
        self.train = self._read(train, "training") if train is not None else None
        self.valid = self._read(valid, "validation") if valid is not None else None
        self.test = self._read(test, "test") if test is not None else self.valid
        if self.valid is None:
            self.valid = self.test
        if self.train is not None:  # examples, or windows of a causal LM's text
            lm = task == "lm"
            self.n_train = len(self.train.tokens) // self.seq_len if lm else len(self.train)
        return self

    def _read(self, path, split: str):
        if self.task == "lm":
            tokens = tokens_from_documents(self.tokenizer, read_documents([path]))
            return TokenWindows(tokens, self.seq_len, self.batch_size, name=split)
        records = read_task_file(path, self.task, split)
        return records[: self.eval_limit] if split == "test" and self.eval_limit else records

    @property
    def objective_task(self) -> str:
        return "sft" if self.task == "lm" else self.task

    def _features(self, records, split: str):
        ids = {name: i for i, name in enumerate(self.labels)}
        return encode(self.task, self.tokenizer, records, ids, self.info["max_len"], split)

    # ------------------------------------------------------------------ batches
    def train_batches(self, batch_size: int, seed: int):
        if self.task == "lm":
            return TokenWindows(self.train.tokens, self.train.seq_len, batch_size, seed=seed)
        return batches_for(self.task, self._features(self.train, "training"), self.tokenizer,
                           self.model, batch_size, seed=seed)  # fmt: skip

    def valid_batches(self):
        if self.task == "lm":
            return self.valid.sequential(self._max_windows())
        features = self._features(self.valid, "validation")
        return batches_for(self.task, features, self.tokenizer, self.model, self.batch_size,
                           name="validation").sequential()  # fmt: skip

    def importance_batches(self, n: int) -> list[dict[str, Tensor]]:
        source = self.train_batches(self.batch_size, seed=1)
        return [source.batch(step) for step in range(n)]

    def plain_objective(self):
        return causal_lm_loss if self.task == "lm" else TaskObjective(self.task, self.labels)

    def _max_windows(self) -> int | None:
        return None if self.eval_limit is None else max(1, self.eval_limit // self.batch_size)

    def speed_batches(self) -> list[dict[str, Tensor]]:
        if self.task == "lm":
            windows = TokenWindows(self.test.tokens, self.test.seq_len, self.speed_batch)
            batches = list(windows.sequential(self.speed_count))
            return [{"input_ids": b["input_ids"]} for b in batches]
        features = self._features(self.test, "test")
        if self.speed_sort:  # the same examples as in file order, by length: less padding
            features = sorted(features[: self.speed_batch * self.speed_count],
                              key=lambda f: len(f["input_ids"]))  # fmt: skip
        source = batches_for(self.task, features, self.tokenizer, self.model, self.speed_batch,
                             name="test")  # fmt: skip
        out = []
        for b in source.sequential():
            out.append({k: v for k, v in b.items() if k in ("input_ids", "attention_mask",
                                                            "token_type_ids")})  # fmt: skip
            if len(out) == self.speed_count:
                break
        return out

    def speed_units(self, batch: dict[str, Tensor]) -> int:
        if self.task == "lm":
            return batch["input_ids"].numel()
        return batch["input_ids"].size(0)

    @property
    def speed_unit(self) -> str:
        return "tokens/s" if self.task == "lm" else "examples/s"

    # ------------------------------------------------------------------ scoring and saving
    @torch.no_grad()
    def quality(self, model) -> dict[str, float]:
        model.eval()
        if self.task == "lm":
            result = evaluate_loss(model, causal_lm_loss, self.test.sequential(self._max_windows()),
                                   torch.device("cpu"))  # fmt: skip
            return {"loss": result["eval_loss"], "perplexity": math.exp(result["eval_loss"])}
        scores = score_records(model, self.tokenizer, self.info, self.test, split="test",
                               batch_size=self.batch_size, warn=False)  # fmt: skip
        keys = ("accuracy", "macro_f1", "token_acc", "entity_f1", "loss")
        return {k: float(scores[k]) for k in keys if k in scores}

    def save_extra(self, out_dir: Path) -> None:
        self.tokenizer.save(out_dir)
        if self.info is not None:
            write_task_info(out_dir, self.info)

    def save_dir(self, model: Transformer, out_dir: Path) -> Path:
        save_model(model, out_dir)
        self.save_extra(out_dir)
        return out_dir
