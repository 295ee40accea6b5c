"""The reference for `bench/finetune_real.py`: the same fine-tune of the real all-MiniLM-L6-v2 with
Hugging Face transformers (`BertForSequenceClassification`) and peft (LoRA), in a plain PyTorch
loop with the hyper-parameters of `finetune_real.HYPER` (read that docstring).

To start from the same point as lmforge, whose import of the bare `BertModel` keeps the encoder
only, the pooler is re-initialised like the classifier (N(0, 0.02), zero bias); `--keep-pooler`
keeps the checkpoint's pooler instead. Learning rate per step, as lmforge's `get_lr`:

    lr_t = lr (t + 1) / W  for t < W;   lr_t = lr (1 - (t - W) / (S - W))  after   (S steps, W warm-up)

`--lr` and `--epochs` override the method's learning rate and the number of epochs, with the same
meaning as in `bench/finetune_real.py`; both are recorded in the JSON line. Each epoch's validation
scores are printed to stderr as they come.

Usage:
    .venv/bin/python bench/hf_finetune_real.py --method full --train-limit 2000 --json runs/real.jsonl
    .venv/bin/python bench/hf_finetune_real.py --method lora --train-limit 2000 --json runs/real.jsonl
    .venv/bin/python bench/hf_finetune_real.py --method lora --lr 1e-3 --epochs 5 --json runs/real.jsonl
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from finetune_real import HYPER, minilm_dir, read_split, record, steps_for
from torch import nn

from lmforge.evaluate.metrics import accuracy, macro_f1

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices only (not embeddings, norms or biases), as lmforge's optimizer."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embeddings else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, lr: float, steps: int, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (1.0 - min(1.0, (step - warmup) / max(1, steps - warmup)))


def build(method: str, keep_pooler: bool, labels: list[str], seed: int) -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=len(labels)
    )
    heads = [model.classifier] + ([] if keep_pooler else [model.bert.pooler.dense])
    for layer in heads:
        nn.init.normal_(layer.weight, 0.0, 0.02)
        nn.init.zeros_(layer.bias)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=HYPER["lora_r"],
            lora_alpha=HYPER["lora_alpha"],
            lora_dropout=HYPER["lora_dropout"],
            target_modules=["query", "value"],
            modules_to_save=["pooler", "classifier"],
            bias="none",
        )
        model = get_peft_model(model, config)
    return model


class Encoded:
    """Token ids of a split, padded per batch."""

    def __init__(self, tokenizer, rows: list[dict], ids: dict[str, int]) -> None:
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=HYPER["max_len"])
        self.tokenizer, self.input_ids = tokenizer, enc["input_ids"]
        self.labels = torch.tensor([ids[r["label"]] for r in rows])

    def batch(self, index: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        feats = [{"input_ids": self.input_ids[i]} for i in index]
        out = {**self.tokenizer.pad(feats, return_tensors="pt"), "labels": self.labels[index]}
        return {k: v.to(device) for k, v in out.items()}


@torch.no_grad()
def predict(model: nn.Module, data: Encoded) -> list[int]:
    model.eval()
    device = next(model.parameters()).device
    guesses: list[int] = []
    n = len(data.input_ids)
    for start in range(0, n, HYPER["batch_size"]):
        batch = data.batch(list(range(start, min(n, start + HYPER["batch_size"]))), device)
        batch.pop("labels")
        guesses += model(**batch).logits.argmax(-1).tolist()
    return guesses


def scores(model: nn.Module, data: Encoded, labels: list[str]) -> dict[str, float]:
    gold = [labels[i] for i in data.labels.tolist()]
    guess = [labels[i] for i in predict(model, data)]
    return {"accuracy": accuracy(gold, guess), "macro_f1": macro_f1(gold, guess, labels=labels)}


def run(
    method: str,
    train_limit: int | None,
    threads: int,
    keep_pooler: bool,
    device: str,
    seed: int,
    eval_limit: int | None = None,
    lr: float | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    import transformers

    torch.set_num_threads(threads)
    dev = torch.device(device)
    t0 = time.perf_counter()
    train_rows = read_split("train", train_limit)
    labels = sorted({r["label"] for r in train_rows})
    ids = {y: i for i, y in enumerate(labels)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    splits = {n: Encoded(tokenizer, read_split(n, eval_limit), ids) for n in ("valid", "test")}
    train = Encoded(tokenizer, train_rows, ids)
    model = build(method, keep_pooler, labels, seed).to(dev)
    n_all = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = HYPER["lr"][method] if lr is None else lr
    epochs = HYPER["epochs"] if epochs is None else epochs
    steps, warmup = steps_for(len(train_rows), epochs)
    opt = torch.optim.AdamW(param_groups(model, HYPER["weight_decay"]), lr=lr,
                            betas=HYPER["betas"], eps=HYPER["eps"])  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    per_epoch = steps // epochs
    best: tuple[float, int, dict] | None = None
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_rows), generator=gen).tolist()
        for b in range(per_epoch):
            rows = order[b * HYPER["batch_size"] : (b + 1) * HYPER["batch_size"]]
            batch = train.batch(rows, dev)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr, steps, warmup)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        valid = scores(model, splits["valid"], labels)
        print(f"epoch {epoch + 1}/{epochs} step {step}: valid accuracy {valid['accuracy']:.4f} "
              f"macro-F1 {valid['macro_f1']:.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
        if best is None or valid["macro_f1"] > best[0]:
            best = (valid["macro_f1"], step, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    valid, test = scores(model, splits["valid"], labels), scores(model, splits["test"], labels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {
        "impl": "hf-transformers" + ("+peft" if method == "lora" else ""),
        "method": method,
        "seed": seed,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "train_examples": len(train_rows),
        "test_examples": len(splits["test"].input_ids),
        "lr": lr,
        "epochs": epochs,
        "steps": step,
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "valid_accuracy": valid["accuracy"],
        "best_step": best[1],
        "trainable": f"trainable {n_trainable} of {n_all} parameters "
        f"({100 * n_trainable / n_all:.2f}%)",
        "wall_s": round(wall, 1),
        "transformers": transformers.__version__,
        "pooler": "checkpoint" if keep_pooler else "re-initialised",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training rows")
    parser.add_argument("--eval-limit", type=int, default=None, help="first N valid/test rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=HYPER["seed"])
    parser.add_argument("--keep-pooler", action="store_true", help="keep the checkpoint's pooler")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: HYPER's, 5e-5 full / 5e-4 LoRA)",
    )
    parser.add_argument("--epochs", type=int, default=HYPER["epochs"], help="passes over train")
    parser.add_argument("--json", type=Path, default=None, help="append the result here")
    args = parser.parse_args()
    row = run(args.method, args.train_limit, args.threads, args.keep_pooler, args.device,
              args.seed, args.eval_limit, args.lr, args.epochs)  # fmt: skip
    record(args.json, row)


if __name__ == "__main__":
    main()
