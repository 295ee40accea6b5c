"""Labelled data for fine-tuning: CSV/JSONL files -> checked records and label sets.

    task      columns (CSV header or JSONL keys)        one example
    classify  text [, text_pair], label                [CLS] text [SEP] (text_pair [SEP]) -> label id
    tokens    tokens, tags (BIO, one tag per token)     [CLS] pieces [SEP]; a word's tag on its first
                                                       piece, IGNORE on the others
    sft       prompt, response  or  messages (chat)     prompt response [EOS]; loss on the response
    seq2seq   source, target                           encoder: source [EOS]; decoder: target [EOS]
    qa        context, question, answers (SQuAD)        windows [CLS] question [SEP] context [SEP]
                                                       (`lmforge.data.qa`)
    choice    question, choices, label [, context]      one input per option (`lmforge.data.choice`)

A decoder tokenizer without [CLS]/[SEP] uses BOS/EOS in their places. In a CSV file `tokens` and
`tags` are space-separated strings; in JSONL they are lists (or such strings). Files end in .csv,
.tsv, .jsonl or .json (a list of objects).

Token ids and batches are made by `lmforge.data.task_batches`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lmforge.data.sources import _read_utf8
from lmforge.errors import DataError

Task = Literal["classify", "tokens", "sft", "seq2seq", "qa", "choice"]
TASKS: tuple[str, ...] = ("classify", "tokens", "sft", "seq2seq", "qa", "choice")
#: task -> (required columns, optional columns); sft takes `messages` instead of prompt/response
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classify": (("text", "label"), ("text_pair",)),
    "tokens": (("tokens", "tags"), ()),
    "sft": (("prompt", "response"), ()),
    "seq2seq": (("source", "target"), ()),
    "qa": (("context", "question", "answers"), ("id",)),
    "choice": (("question", "choices", "label"), ("context",)),
}
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
Record = dict[str, Any]
Features = dict[str, Any]


# --------------------------------------------------------------------------- reading
def read_rows(path: str | Path, split: str = "training") -> list[Record]:
    """The rows of a CSV/TSV (header = column names), JSONL or JSON file, as dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the {split} file {path} does not exist; pass a .csv or .jsonl file.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"the {split} file {path} ends in '{suffix}'; pass a .csv, .tsv, .jsonl or .json file."
        )
    text = _read_utf8(path)
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        return [{k: v for k, v in row.items() if k is not None} for row in reader]
    if suffix == ".json":
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path} must hold a JSON list of objects, one per example.")
        return rows
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno} is not valid JSON ({e.msg}).") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno} is not a JSON object; write one object per line.")
        rows.append(row)
    return rows


def read_task_file(path: str | Path, task: str, split: str = "training") -> list[Record]:
    """Read and check one split: every row has the task's columns, with usable values.

    Returns records with normalised values: classify {"text", "text_pair" (or None), "label"};
    tokens {"tokens": [...], "tags": [...]}; sft {"prompt", "response"} or {"messages"};
    seq2seq {"source", "target"}. Labels and tags are strings.

    Raises:
        DataError: the file is missing or empty, a column is missing (the columns found are
            named), or a value is empty or of the wrong kind.
    """
    if task not in TASKS:
        raise DataError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}.")
    if task == "qa":
        from lmforge.data.qa import read_qa_file

        return read_qa_file(path, split)
    if task == "choice":
        from lmforge.data.choice import read_choice_file

        return read_choice_file(path, split)
    rows = read_rows(path, split)
    required, optional = COLUMNS[task]
    if not rows:
        raise DataError(
            f"the {split} file {path} holds no examples; add rows with the columns "
            f"{', '.join(required + optional)}."
        )
    records = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        if task == "sft" and row.get("messages") not in (None, ""):
            records.append({"messages": _messages(row["messages"], where)})
            continue
        missing = [c for c in required if c not in row]
        if missing:
            found = ", ".join(repr(k) for k in row) or "none"
            also = " (or a messages column)" if task == "sft" else ""
            raise DataError(
                f"the {split} file {path} has no '{missing[0]}' column{also} (columns found: "
                f"{found}); the {task} task reads {', '.join(required + optional)}."
            )
        records.append(_record(task, row, where))
    return records


def _text(value: Any, column: str, where: str, allow_empty: bool = True) -> str:
    if value is None or (not allow_empty and str(value).strip() == ""):
        raise DataError(f"{where} has an empty '{column}'; give every example a value.")
    if isinstance(value, dict | list):
        raise DataError(f"{where} has a '{column}' of type {type(value).__name__}; make it text.")
    return str(value)


def _words(value: Any, column: str, where: str) -> list[str]:
    words = value.split() if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise DataError(
            f"{where} has a '{column}' that is neither a list of strings nor a space-separated "
            "string; write one of them."
        )
    return words


def _record(task: str, row: Record, where: str) -> Record:
    if task == "classify":
        pair = row.get("text_pair")
        return {
            "text": _text(row["text"], "text", where),
            "text_pair": None if pair in (None, "") else _text(pair, "text_pair", where),
            "label": _text(row["label"], "label", where, allow_empty=False),
        }
    if task == "tokens":
        tokens, tags = _words(row["tokens"], "tokens", where), _words(row["tags"], "tags", where)
        if not tokens:
            raise DataError(f"{where} has no tokens; give every example at least one token.")
        if len(tokens) != len(tags):
            raise DataError(
                f"{where} has {len(tokens)} tokens but {len(tags)} tags; give one tag per token."
            )
        return {"tokens": tokens, "tags": tags}
    if task == "sft":
        return {
            "prompt": _text(row["prompt"], "prompt", where),
            "response": _text(row["response"], "response", where, allow_empty=False),
        }
    return {
        "source": _text(row["source"], "source", where),
        "target": _text(row["target"], "target", where, allow_empty=False),
    }


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok:
        raise DataError(
            f'{where} has messages that are not a list of {{"role": ..., "content": ...}} '
            "objects; write them that way."
        )
    if not any(m["role"] == "assistant" for m in value):
        raise DataError(f"{where} has no assistant message to learn from; add the reply.")
    return value


# --------------------------------------------------------------------------- labels
def label_names(values: Sequence[str], tags: bool = False) -> list[str]:
    """The label set of the training split, in a stable order: numerically when every label is
    an integer, else alphabetically; for tags "O" comes first."""
    unique = set(values)
    try:
        names = sorted(unique, key=int)
    except ValueError:
        names = sorted(unique)
    if tags and "O" in unique:
        names = ["O"] + [n for n in names if n != "O"]
    return names


def check_labels(
    values: Sequence[str], known: Sequence[str], split: str, path: str | Path, what: str = "label"
) -> None:
    """One sentence when a split holds a label (or tag) the training split never had."""
    known_set = set(known)
    unknown = [v for v in values if v not in known_set]
    if unknown:
        first = unknown[0]
        count = unknown.count(first)
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise DataError(
            f"the {split} file {path} has the {what} '{first}' ({count} time(s)) that the training "
            f"file never had (training {what}s: {shown}); add training examples of it or drop "
            "those rows."
        )


def record_labels(records: Sequence[Record], task: str) -> list[str]:
    """Every label (classify) or tag (tokens) of the records, in order."""
    if task == "classify":
        return [r["label"] for r in records]
    return [t for r in records for t in r["tags"]]
