"""Rebuild the word-analogy tasks from the `questions-words.txt` that gensim's wheel ships.

Source: `gensim==4.4.0` (PyPI wheel) carries `gensim/test/test_data/questions-words.txt`, the
word-analogy test set of word2vec (Mikolov et al., 2013): lines "a b c d" meaning a : b = c : d,
in sections such as ": capital-world". See PROVENANCE.md beside this file.

Outputs (seed 0, `random.Random`):

    analogy_choice.jsonl   500 questions from the five semantic sections, multiple choice:
                           {"section", "question": "Athens is to Greece as Baghdad is to",
                            "choices": [4 words of the same section], "label": index}
    analogy_gen.jsonl      the same 500 questions as {"question", "answer"} (free generation)
    capitals_qa/{train,valid,test}.jsonl
                           extractive QA (SQuAD format) over the real (capital, country) pairs of
                           "capital-common-countries" and "capital-world": a context of 6 facts
                           "<capital> is the capital of <country>." in random order, the question
                           "What is the capital of <country>?", the answer the capital's span.
                           Countries are split 70/10/20 so test countries never occur in training.

Usage:
    python data/real/word_analogies/build.py                 # pip-downloads the wheel
    python data/real/word_analogies/build.py --wheel gensim-4.4.0-....whl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "gensim==4.4.0"
MEMBER = "gensim/test/test_data/questions-words.txt"
MEMBER_SHA256 = "8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36"
SEMANTIC = ["capital-common-countries", "capital-world", "currency", "city-in-state", "family"]
TEMPLATES = {
    "capital-common-countries": "{a} is to {b} as {c} is to",
    "capital-world": "{a} is to {b} as {c} is to",
    "currency": "{a} is to {b} as {c} is to",
    "city-in-state": "{a} is to {b} as {c} is to",
    "family": "{a} is to {b} as {c} is to",
}
HERE = Path(__file__).resolve().parent
SEED = 0


def read_sections(text: str) -> dict[str, list[list[str]]]:
    sections: dict[str, list[list[str]]] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith(":"):
            name = line[1:].strip()
            sections.setdefault(name, [])
        elif line.strip():
            sections[name].append(line.split())
    return sections


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def build(text: str) -> None:
    rng = random.Random(SEED)
    sections = read_sections(text)
    questions = [(name, q) for name in SEMANTIC for q in sections[name]]
    chosen = rng.sample(questions, 500)
    choice_rows, gen_rows = [], []
    for name, (a, b, c, d) in chosen:
        pool = sorted({q[3] for q in sections[name]} - {d})
        options = rng.sample(pool, 3) + [d]
        rng.shuffle(options)
        question = TEMPLATES[name].format(a=a, b=b, c=c)
        choice_rows.append({"section": name, "question": question, "choices": options,
                            "label": options.index(d)})  # fmt: skip
        gen_rows.append({"section": name, "question": question, "answer": d})
    write_jsonl(HERE / "analogy_choice.jsonl", choice_rows)
    write_jsonl(HERE / "analogy_gen.jsonl", gen_rows)

    pairs = sorted({(q[0], q[1]) for n in SEMANTIC[:2] for q in sections[n]}
                   | {(q[2], q[3]) for n in SEMANTIC[:2] for q in sections[n]})  # fmt: skip
    capital_of = dict((country, capital) for capital, country in pairs)
    countries = sorted(capital_of)
    rng.shuffle(countries)
    n = len(countries)
    cut = {"train": countries[: round(0.7 * n)], "valid": countries[round(0.7 * n) : round(0.8 * n)],
           "test": countries[round(0.8 * n) :]}  # fmt: skip
    sizes = {"train": 1500, "valid": 150, "test": 300}
    for split, pool in cut.items():
        rows = []
        for i in range(sizes[split]):
            facts = rng.sample(pool, min(6, len(pool)))
            asked = facts[rng.randrange(len(facts))]
            context, start = "", 0
            for country in facts:
                if country == asked:
                    start = len(context) + (1 if context else 0)
                context += (" " if context else "") + f"{capital_of[country]} is the capital of {country}."
            rows.append({"id": f"{split}-{i}", "context": context,
                         "question": f"What is the capital of {asked}?",
                         "answers": {"text": [capital_of[asked]], "answer_start": [start]}})  # fmt: skip
            assert context[start : start + len(capital_of[asked])] == capital_of[asked]
        write_jsonl(HERE / "capitals_qa" / f"{split}.jsonl", rows)
    print(f"{len(choice_rows)} analogy questions; countries {({k: len(v) for k, v in cut.items()})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a gensim-4.4.0 wheel (default: pip download)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                            ":all:", PACKAGE, "-d", tmp], check=True)  # fmt: skip
            wheel = next(Path(tmp).glob("gensim-4.4.0-*.whl"))
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER} has SHA-256 {digest}, expected {MEMBER_SHA256}.")
    build(data.decode("utf-8"))


if __name__ == "__main__":
    main()
