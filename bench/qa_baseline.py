"""Simple baselines of extractive QA on a SQuAD-format file, scored like `finetune --task qa`.

    first-sentence   the context's first sentence (up to the first ". ")
    question-overlap the sentence sharing the most words with the question (ties: the first)

Usage:
    python bench/qa_baseline.py data/real/word_analogies/capitals_qa/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re

from lmforge.data.qa import read_qa_file
from lmforge.evaluate.gen_metrics import exact_match, token_f1


def sentences(context: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", context) if s.strip()]


def first_sentence(record: dict) -> str:
    return sentences(record["context"])[0]


def question_overlap(record: dict) -> str:
    words = set(re.findall(r"\w+", record["question"].lower()))
    return max(
        sentences(record["context"]),
        key=lambda s: len(words & set(re.findall(r"\w+", s.lower()))),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a SQuAD-format .json/.jsonl file")
    args = parser.parse_args()
    records = read_qa_file(args.data, "evaluation")
    golds = [r["answers"]["text"] or [""] for r in records]
    out = {"data": args.data, "n": len(records), "load_avg": os.getloadavg()}
    for name, fn in (("first_sentence", first_sentence), ("question_overlap", question_overlap)):
        preds = [fn(r) for r in records]
        out[name] = {"exact_match": exact_match(preds, golds), "f1": token_f1(preds, golds)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
