"""(query, positive[, negatives]) pairs for training sentence embeddings, and their batches.

A pair file is CSV/TSV/JSONL/JSON (as for `lmforge finetune`) with columns `query`, `positive`
and optionally `negatives` (a JSON list of texts, or one text in a `negative` column). Each
side is encoded on its own ([CLS] text [SEP], cut to `max_len`); `recipes.finetune_embed` pads
the batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmforge.data.tasks import read_rows
from lmforge.errors import DataError

Pair = dict[str, Any]


def read_pairs(path, split: str = "training") -> list[Pair]:
    """{"query", "positive", "negatives": [...]} per row; one sentence for a bad row."""
    out = []
    for n, row in enumerate(read_rows(path, split), 1):
        where = f"{path} row {n}"
        query, positive = row.get("query"), row.get("positive")
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{where} needs a non-empty 'query' text.")
        if not isinstance(positive, str) or not positive.strip():
            raise DataError(f"{where} needs a non-empty 'positive' text.")
        negatives = row.get("negatives", [])
        if isinstance(row.get("negative"), str) and row["negative"].strip():
            negatives = [row["negative"]]
        if not isinstance(negatives, list) or not all(isinstance(x, str) for x in negatives):
            raise DataError(f"{where}: 'negatives' must be a list of texts.")
        out.append({"query": query, "positive": positive, "negatives": negatives})
    if not out:
        raise DataError(f"the {split} file {path} has no pairs; add rows of query, positive.")
    return out


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_len: int) -> list[dict[str, Any]]:
    """Token ids of each side ([CLS] ... [SEP], cut to max_len); texts kept to find duplicates."""
    backend = tokenizer.backend
    backend.enable_truncation(max_len)
    try:
        queries = tokenizer.encode_batch([p["query"] for p in pairs], add_special_tokens=True)
        positives = tokenizer.encode_batch([p["positive"] for p in pairs], add_special_tokens=True)
        negs = [tokenizer.encode_batch(p["negatives"], add_special_tokens=True) if p["negatives"]
                else [] for p in pairs]  # fmt: skip
    finally:
        backend.no_truncation()
    return [{"query": q, "positive": d, "negatives": n, "positive_text": p["positive"],
             "negative_texts": list(p["negatives"])}
            for q, d, n, p in zip(queries, positives, negs, pairs, strict=True)]  # fmt: skip
