"""Cloze prompting on a real data set with a small masked LM pretrained here, briefly.

The real all-MiniLM-L6-v2 cannot do cloze: it is a sentence-embedding `BertModel` shipped without
a trained MLM head (lmforge refuses it with a clear error). So this script pretrains a small BERT
(`bert-tiny` shape widened to d_model=128, WordPiece vocabulary of 4,096) from scratch with
`pretrain(..., objective="mlm-nsp")` on the *texts* of the VADER movie-review training split
(labels unused; 5 sentences per document so next-sentence pairs exist), then classifies the test
split with `lmforge.prompting.classify`, zero-shot and 2-shot (two demonstrations fit in its 128 positions), with and without contextual
calibration, next to the same model before pretraining (random weights: the chance level).

Usage:
    .venv/bin/python bench/prompt_cloze.py --steps 600 --test-limit 1000 --json runs/cloze.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from finetune_real import read_split

from lmforge.models import Transformer, load_model
from lmforge.prompting import Example, classify
from lmforge.recipes.pretrain import pretrain
from lmforge.tokenizer import Tokenizer

TEMPLATE = "{text} it was [MASK] ."
VERBALIZER = ["positive=good,great", "negative=bad,terrible"]


def documents(path: Path, per_doc: int = 5) -> Path:
    texts = [r["text"] for r in read_split("train")]
    docs = [" ".join(texts[i : i + per_doc]) for i in range(0, len(texts), per_doc)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = [Example(r["text"], r["label"]) for r in read_split("test", args.test_limit)]
    pool = [Example(r["text"], r["label"]) for r in read_split("train", 2000)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        overrides = {"max_steps": args.steps, "batch_size": 32, "seq_len": 128, "lr": 1e-3,
                     "warmup_steps": 50, "eval_every": max(50, args.steps // 4), "vocab_size": 4096,
                     "d_model": 128, "n_head": 4, "n_layer": 2, "threads": args.threads}  # fmt: skip
        result = pretrain([documents(Path(tmp) / "docs.jsonl")], Path(tmp) / "run",
                          preset="bert-tiny", objective="mlm-nsp", overrides=overrides,
                          progress=False)  # fmt: skip
        pretrain_s = time.perf_counter() - t0
        tok = Tokenizer.load(result.out_dir)
        trained = load_model(result.out_dir)
        torch.manual_seed(0)
        untrained = Transformer(trained.cfg).eval()
        for name, model in (("random init", untrained), ("pretrained", trained)):
            for shots in (0, 2):
                for calibrated in (False, True):
                    r = classify(model, tok, test, TEMPLATE, VERBALIZER, shots=shots, pool=pool,
                                 seed=0, calibrated=calibrated, batch_size=32)  # fmt: skip
                    row = {"model": name, "shots": shots, "calibrated": calibrated,
                           "accuracy": r.accuracy, "macro_f1": r.macro_f1, "n": len(test),
                           "truncated": r.truncated}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = {"pretrain_steps": args.steps, "pretrain_s": round(pretrain_s, 1),
               "eval_mlm_acc": result.eval_metrics.get("eval_mlm_acc"),
               "eval_nsp_acc": result.eval_metrics.get("eval_nsp_acc"),
               "params": result.n_params, "template": TEMPLATE, "verbalizer": VERBALIZER}  # fmt: skip
    print(json.dumps(summary))
    if args.json is not None:
        with open(args.json, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({**summary, **row}) + "\n")


if __name__ == "__main__":
    main()
