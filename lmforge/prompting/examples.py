"""Labelled examples for prompting: reading CSV/JSONL files and drawing demonstrations.

A file holds one example per row (CSV/TSV with a header), per line (JSONL) or per object (a JSON
list), read by `lmforge.data.tasks.read_rows` as fine-tuning files are, with a text field
and, optionally, a label field. Labels are compared as strings (`1` and `"1"` are the same label).

Demonstrations (in-context examples) for query i are K examples drawn uniformly without
replacement from the labelled pool by `random.Random("<seed>/<i>")`: the same seed gives the same
demonstrations for every query, a different seed a different draw, and the query itself (the same
row when the pool is the data, or any pool row with the same text) is never among them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.tasks import read_rows
from lmforge.errors import DataError


@dataclass(frozen=True)
class Example:
    """One text and its label (None when the data has no labels)."""

    text: str
    label: str | None = None


def read_examples(
    path: str | Path, text_field: str = "text", label_field: str = "label"
) -> list[Example]:
    """Examples of a `.jsonl`, `.json`, `.csv` or `.tsv` file; every row labelled, or none.

    Args:
        path: the file.
        text_field: the column / key holding the text.
        label_field: the column / key holding the label (may be absent from the whole file).
    """
    path = Path(path)
    rows = read_rows(path, "data")
    if not rows:
        raise DataError(f"{path} holds no examples; add at least one row.")
    examples: list[Example] = []
    unlabelled: list[int] = []
    for i, row in enumerate(rows, start=1):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise DataError(
                f"row {i} of {path} has no text field '{text_field}'; name the column with "
                "--text-field or fix the row."
            )
        label = row.get(label_field)
        if label is None or label == "":
            unlabelled.append(i)
        examples.append(Example(text, None if label in (None, "") else str(label)))
    if unlabelled and len(unlabelled) < len(examples):
        raise DataError(
            f"row(s) {unlabelled[:3]} of {path} have no '{label_field}' but other rows do; "
            "label every row or none."
        )
    return examples


def has_labels(examples: Sequence[Example]) -> bool:
    return bool(examples) and all(e.label is not None for e in examples)


def draw_demonstrations(
    pool: Sequence[Example],
    k: int,
    seed: int,
    query_index: int,
    query_text: str,
    pool_is_data: bool,
) -> list[int]:
    """Indices into `pool` of the K demonstrations for query `query_index`.

    Candidates are the labelled pool rows other than the query (row `query_index` when the pool
    is the data itself, and any row whose text equals `query_text`); K of them are drawn without
    replacement with `random.Random(f"{seed}/{query_index}")`, in the order drawn.
    """
    if k == 0:
        return []
    candidates = [
        j
        for j, ex in enumerate(pool)
        if ex.label is not None
        and ex.text != query_text
        and not (pool_is_data and j == query_index)
    ]
    if len(candidates) < k:
        raise DataError(
            f"the demonstration pool has {len(candidates)} labelled example(s) besides the query "
            f"but --shots is {k}; use fewer shots or a larger --pool."
        )
    return random.Random(f"{seed}/{query_index}").sample(candidates, k)
