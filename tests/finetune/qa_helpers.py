"""Toy extractive-QA and multiple-choice rows for the qa / choice fine-tuning tests."""

from __future__ import annotations

import random

NAMES = ["anna", "bob", "carla", "dmitri", "elif", "femi", "gita", "hugo", "ines", "jun"]
CITIES = ["paris", "lima", "oslo", "cairo", "delhi", "tokyo", "quito", "rome", "seoul", "perth"]
FILLER = ["the weather was mild", "a train left early", "the market was busy",
          "nobody said a word", "the river ran high", "birds sang all day"]  # fmt: skip


def qa_rows(n: int, seed: int = 0, unanswerable: float = 0.0) -> list[dict]:
    """SQuAD-format rows: a context of filler and "X lives in Y." facts; "Where does X live?"."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        people = rng.sample(NAMES, 3)
        facts = {p: rng.choice(CITIES) for p in people}
        parts = [rng.choice(FILLER) + "." for _ in range(rng.randint(1, 4))]
        for p in people:
            parts.insert(rng.randint(0, len(parts)), f"{p} lives in {facts[p]}.")
        context = " ".join(parts)
        who = rng.choice(people)
        if rng.random() < unanswerable:
            who = rng.choice([x for x in NAMES if x not in people])
            answers = {"text": [], "answer_start": []}
        else:
            start = context.index(f"{who} lives in ") + len(f"{who} lives in ")
            answers = {"text": [facts[who]], "answer_start": [start]}
        rows.append({"id": f"q{seed}-{i}", "context": context,
                     "question": f"where does {who} live?", "answers": answers})  # fmt: skip
    return rows


def choice_rows(n: int, seed: int = 0) -> list[dict]:
    """ "Where does X live?" with a context and 2-4 city options, the label an index or a text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        who, city = rng.choice(NAMES), rng.choice(CITIES)
        options = rng.sample([c for c in CITIES if c != city], rng.randint(1, 3)) + [city]
        rng.shuffle(options)
        label = options.index(city) if i % 2 else city
        rows.append({"context": f"{who} lives in {city}.", "question": f"where does {who} live?",
                     "choices": options, "label": label})  # fmt: skip
    return rows
