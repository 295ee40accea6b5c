"""`lmforge finetune --augment N` on 100 VADER rows: full fine-tuning of all-MiniLM-L6-v2 with
and without augmentation, 3 seeds.

For each seed s: 100 training rows drawn from data/real/vader_movies/train.jsonl with
random.Random(s) (the same first 100 rows as `bench/augment_vader.py`), validation = the first
200 rows of valid.jsonl (best epoch by macro-F1), test = all 2,014 rows of test.jsonl.
Fine-tuning: `lmforge.recipes.finetune.finetune`, method full, 3 epochs, batch 16, lr 5e-5,
max_len 128, seed s; "augmented" sets `FinetuneConfig(augment=2)` (2 EDA copies per row,
synonyms from MiniLM's own embeddings, seeded by s).

    python bench/augment_finetune_vader.py --json augment_finetune.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch
from augment_vader import DATA, read
from knowledge_common import minilm_source

from lmforge.interop import import_hf
from lmforge.recipes.finetune import FinetuneConfig, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/augment_finetune"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    minilm = args.work / "minilm"
    if not (minilm / "model.safetensors").is_file():
        import_hf(minilm_source(), minilm)
    valid = args.work / "valid.jsonl"
    valid.write_text("".join(json.dumps(r) + "\n" for r in read("valid.jsonl")[:200]))
    train_all = read("train.jsonl")
    runs = []
    for seed in (0, 1, 2):
        rows = random.Random(seed).sample(train_all, 300)[: args.rows]
        train = args.work / f"train{seed}.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for copies in (0, 2):
            fc = FinetuneConfig(task="classify", epochs=3.0, max_len=128, augment=copies)
            r = finetune(minilm, train, args.work / f"run{seed}_{copies}", fc, valid=valid,
                         test=DATA / "test.jsonl", progress=False,
                         overrides={"batch_size": 16, "lr": 5e-5, "seed": seed,
                                    "device": "cpu", "precision": "fp32"})  # fmt: skip
            runs.append({"seed": seed, "rows": args.rows, "copies": copies,
                         "train_examples": r.metrics["train_examples"], "steps": r.train.steps,
                         "test_accuracy": r.metrics["test"]["accuracy"]})  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for copies in (0, 2):
        accs = [x["test_accuracy"] for x in runs if x["copies"] == copies]
        summary[copies] = {"mean": statistics.mean(accs), "stdev": statistics.stdev(accs)}
    record = {"runs": runs, "summary": summary, "seconds": round(time.time() - started, 1),
              "threads": args.threads, "loadavg": os.getloadavg()}  # fmt: skip
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
