"""Text data augmentation for classification (EDA-style operations, label kept).

For a text of n words and a strength alpha (default 0.1), with k = max(1, round(alpha * n)):

    swap      swap two random words, k times
    delete    drop each word with probability alpha (at least one word stays)
    insert    insert a synonym of a random word at a random position, k times
    synonym   replace k random words (that have synonyms) by a random synonym
    context   replace k random words by a fill-mask model's guess in context

`synonym` and `insert` take synonyms from a `Synonyms` function (word -> candidates), e.g. the
nearest neighbours of the word in a model's own input-embedding matrix; `context` takes a
`Contextual` function (words, position -> candidates), e.g. a BERT-family masked LM
(`lmforge.recipes.augment`). Everything is drawn from `random.Random` seeded by
(seed, example index, copy index), so a run is the same every time and does not depend on the
order in which examples are augmented.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.errors import ConfigError

Synonyms = Callable[[str], list[str]]
Contextual = Callable[[list[str], int], list[str]]
OPS = ("swap", "delete", "insert", "synonym", "context")
EDA_OPS = ("swap", "delete", "insert", "synonym")


def _k(words: list[str], alpha: float) -> int:
    return max(1, round(alpha * len(words)))


def random_swap(words: list[str], alpha: float, rng: random.Random) -> list[str]:
    """Swap two random positions, k times."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_k(out, alpha)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_delete(words: list[str], alpha: float, rng: random.Random) -> list[str]:
    """Drop each word with probability alpha; a text never loses all its words."""
    if len(words) < 2:
        return list(words)
    kept = [w for w in words if rng.random() >= alpha]
    return kept or [rng.choice(words)]


def random_insert(
    words: list[str], alpha: float, rng: random.Random, synonyms: Synonyms
) -> list[str]:
    """Insert a synonym of a random word at a random position, k times (if any word has one)."""
    out = list(words)
    for _ in range(_k(words, alpha)):
        candidates = [w for w in out if synonyms(w)]
        if not candidates:
            break
        out.insert(rng.randrange(len(out) + 1), rng.choice(synonyms(rng.choice(candidates))))
    return out


def synonym_replace(
    words: list[str], alpha: float, rng: random.Random, synonyms: Synonyms
) -> list[str]:
    """Replace k distinct random words that have synonyms by one of their synonyms."""
    out = list(words)
    positions = [i for i, w in enumerate(out) if synonyms(w)]
    for i in rng.sample(positions, min(len(positions), _k(words, alpha))):
        out[i] = rng.choice(synonyms(out[i]))
    return out


def contextual_replace(
    words: list[str], alpha: float, rng: random.Random, contextual: Contextual
) -> list[str]:
    """Replace k random words, one at a time, by a masked LM's candidates for that slot."""
    out = list(words)
    for i in rng.sample(range(len(out)), min(len(out), _k(words, alpha))):
        options = contextual(out, i)
        if options:
            out[i] = rng.choice(options)
    return out


def augment_text(
    text: str,
    rng: random.Random,
    ops: Sequence[str] = EDA_OPS,
    alpha: float = 0.1,
    synonyms: Synonyms | None = None,
    contextual: Contextual | None = None,
) -> str:
    """One augmented copy of `text`: one operation drawn from `ops`, applied to its words."""
    words = text.split()
    if not words:
        return text
    op = rng.choice(list(ops))
    if op == "swap":
        words = random_swap(words, alpha, rng)
    elif op == "delete":
        words = random_delete(words, alpha, rng)
    elif op in ("insert", "synonym"):
        if synonyms is None:
            raise ConfigError(f"augmentation '{op}' needs a synonym source (a model dir).")
        fn = random_insert if op == "insert" else synonym_replace
        words = fn(words, alpha, rng, synonyms)
    elif op == "context":
        if contextual is None:
            raise ConfigError("augmentation 'context' needs a fill-mask model (--fill-mask-model).")
        words = contextual_replace(words, alpha, rng, contextual)
    return " ".join(words)


def check_ops(ops: Sequence[str]) -> list[str]:
    """The operations, checked against `OPS`."""
    ops = [o.strip() for o in ops if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ConfigError(
            f"unknown augmentation '{bad[0] if bad else ''}'; choose from {', '.join(OPS)}."
        )
    return ops


def augment_records(
    records: Sequence[dict[str, Any]],
    n: int,
    *,
    seed: int = 0,
    ops: Sequence[str] = EDA_OPS,
    alpha: float = 0.1,
    synonyms: Synonyms | None = None,
    contextual: Contextual | None = None,
    field: str = "text",
) -> list[dict[str, Any]]:
    """The records followed by n augmented copies of each (other fields, the label, kept).

    Copy j of record i uses random.Random(f"{seed}:{i}:{j}").
    """
    if n < 0:
        raise ConfigError(f"the number of augmented copies must be >= 0, got {n}.")
    ops = check_ops(ops)
    out = list(records)
    for i, record in enumerate(records):
        for j in range(n):
            rng = random.Random(f"{seed}:{i}:{j}")
            text = augment_text(record[field], rng, ops, alpha, synonyms, contextual)
            out.append({**record, field: text})
    return out
