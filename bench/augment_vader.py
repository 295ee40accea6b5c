"""Does text augmentation help a small VADER training set? With vs without, 3 seeds.

Data: data/real/vader_movies (movie-review sentences, positive/negative). For each seed s, 300
training rows are drawn from train.jsonl with random.Random(s); the 100-row setting uses the
first 100 of them. "With augmentation" adds N = 2 copies of every training row made by
`lmforge.recipes.augment.augment_training` (one EDA operation each: swap, delete, insert or
synonym, alpha = 0.1; synonyms = nearest neighbours in all-MiniLM-L6-v2's own input embeddings),
seeded by s.

Classifier: the real all-MiniLM-L6-v2 as a frozen sentence encoder (`lmforge.recipes.embed`,
mean pooling) and a logistic-regression head trained on its embeddings (full batch, Adam,
lr 1e-2, 300 steps, weight decay 1e-3, the same for every run). A frozen encoder is what the
shared 2-core machine allows for 12 runs; the fine-tuning path (`lmforge finetune --augment N`)
uses the same augmentation function. Scored on all 2014 sentences of test.jsonl.

    python bench/augment_vader.py --json /tmp/augment.json
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
from knowledge_common import minilm_source

from lmforge.interop import import_hf
from lmforge.recipes.augment import augment_training
from lmforge.recipes.embed import Embedder

DATA = Path(__file__).resolve().parents[1] / "data" / "real" / "vader_movies"
LABELS = {"negative": 0, "positive": 1}


def read(name: str) -> list[dict]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines]


def train_head(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.size(1), 2)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/augment_vader"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    minilm = args.work / "minilm"
    if not (minilm / "model.safetensors").is_file():
        import_hf(minilm_source(), minilm)
    embed = Embedder(minilm, batch_size=64)
    test = read("test.jsonl")
    x_test = embed([r["text"] for r in test])
    y_test = torch.tensor([LABELS[r["label"]] for r in test])
    train_all = read("train.jsonl")
    runs = []
    for seed in (0, 1, 2):
        rows = random.Random(seed).sample(train_all, 300)
        augmented = augment_training(rows, args.copies, minilm, seed)  # rows, then copies
        texts = [r["text"] for r in augmented]
        x_all = embed(texts)
        y_all = torch.tensor([LABELS[r["label"]] for r in augmented])
        for n in (100, 300):
            original = list(range(n))
            copies = [300 + i * args.copies + j for i in range(n) for j in range(args.copies)]
            for with_aug, keep in ((False, original), (True, original + copies)):
                head = train_head(x_all[keep], y_all[keep], seed)
                with torch.no_grad():
                    acc = float((head(x_test).argmax(-1) == y_test).float().mean())
                runs.append({"seed": seed, "rows": n, "augmented": with_aug,
                             "train_examples": len(keep), "test_accuracy": acc})  # fmt: skip
                print(json.dumps(runs[-1]), flush=True)
        if seed == 0:
            examples = [(augmented[i]["text"], augmented[300 + 2 * i]["text"]) for i in range(3)]
    summary = []
    for n in (100, 300):
        for with_aug in (False, True):
            accs = [
                r["test_accuracy"] for r in runs if r["rows"] == n and r["augmented"] == with_aug
            ]
            summary.append({"rows": n, "augmented": with_aug, "mean": statistics.mean(accs),
                            "stdev": statistics.stdev(accs), "accs": accs})  # fmt: skip
    record = {"runs": runs, "summary": summary, "examples": examples, "copies": args.copies,
              "seconds": round(time.time() - started, 1), "threads": args.threads,
              "loadavg": os.getloadavg()}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
