"""Recall@k of the real all-MiniLM-L6-v2 before and after `lmforge finetune --task embed`.

Pairs come from the country knowledge graph (data/real/geonames_countries): a question about a
country's capital, currency or continent -> the one verbalized fact sentence that answers it
("The currency of Japan is the Yen."). Countries are split 70/30 (random.Random(0)); training
pairs use the train countries and the *train* question templates, the test queries the test
countries and the *held-out* templates. The test corpus is every fact sentence of the test
countries (3 per country), or with `--all-sentences` all 738 of every country, so a query must
find the right country and the right relation.

    python bench/embed_retrieval.py --out /tmp/embed_run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from knowledge_common import load_countries, minilm_source, qa_items, sentence

from lmforge.interop import import_hf
from lmforge.recipes.finetune_embed import finetune_embed


def write_pairs(path: Path, items, templates) -> int:
    rows = [{"query": q, "positive": sentence(t, templates)} for q, t in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/embed_retrieval"))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all-sentences", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    graph, templates, questions, train_c, test_c = load_countries()
    n_train = write_pairs(args.out / "train.jsonl", qa_items(graph, questions, train_c, "train"),
                          templates)  # fmt: skip
    n_test = write_pairs(args.out / "test.jsonl", qa_items(graph, questions, test_c, "heldout"),
                         templates)  # fmt: skip
    corpus = None
    if args.all_sentences:
        corpus = args.out / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": sentence(t, templates)}) + "\n"
                                  for t in graph.triples), encoding="utf-8")  # fmt: skip
    minilm = args.out / "minilm"
    if not (minilm / "model.safetensors").is_file():
        import_hf(minilm_source(), minilm)
    start = time.time()
    r = finetune_embed(minilm, args.out / "train.jsonl", args.out / "run",
                       test=args.out / "test.jsonl", epochs=args.epochs, corpus=corpus,
                       overrides={"batch_size": 32, "lr": 3e-5, "seed": 0}, progress=False)  # fmt: skip
    result = {"train_pairs": n_train, "test_queries": n_test, "test_corpus": len(graph.triples) if corpus else 3 * len(test_c),
              "steps": r.train.steps, "seconds": round(time.time() - start, 1),
              "threads": args.threads, "loadavg": os.getloadavg(),
              "before": r.metrics["before"]["test"], "after": r.metrics["after"]["test"]}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
