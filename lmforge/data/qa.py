"""Extractive question answering (SQuAD format): records, overlapping windows, answer spans.

Records (`read_qa_file`) come from JSONL/JSON rows or the official nested SQuAD JSON:

    {"id": "q1", "question": "...", "context": "...",
     "answers": {"text": ["Denver Broncos"], "answer_start": [177]}}
    (answers may also be a list of {"text", "answer_start"}; an empty list, or
    "is_impossible": true, marks an unanswerable question, SQuAD v2 style)

Every answer is checked: context[answer_start : answer_start + len(text)] == text.

Windows (`qa_windows`): a context longer than the model allows is split into overlapping windows
of context tokens (the "doc stride" of BERT's SQuAD recipe); each window is one model input

    [CLS] question [SEP] context tokens [a, b) [SEP]       token types 0 ... 0 1 ... 1

with budget = max_len - |question| - 3 context tokens, windows starting at 0, step, 2 step, ...
(step = budget - doc_stride, so consecutive windows share doc_stride tokens) until one reaches
the end. The tokenizer's character offsets map each context token back to context[s:e]; an
answer's start/end tokens are the first and last tokens overlapping its characters. A window
that does not hold the whole answer (and an unanswerable question) points both at index 0 ([CLS]),
the "null" answer.

Prediction (`best_answers`): per example, over all its windows, the span (i <= j, at most
`max_answer_len` tokens, both in the context) with the largest start_i + end_j; its characters
come from the offsets. With unanswerable questions allowed, the null score start_0 + end_0 (the
smallest over the windows) wins when it is larger, and the answer is "".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.data.sources import _read_utf8
from lmforge.errors import DataError

Record = dict[str, Any]


# --------------------------------------------------------------------------- reading
def _flatten_squad(doc: dict[str, Any], path: Path) -> list[Record]:
    """The rows of the official nested SQuAD JSON ({"data": [{"paragraphs": [...]}]})."""
    rows = []
    for article in doc.get("data") or []:
        for paragraph in article.get("paragraphs") or []:
            for qa in paragraph.get("qas") or []:
                rows.append({**qa, "context": paragraph.get("context")})
    if not rows:
        raise DataError(f"{path} holds a SQuAD 'data' list without any questions; add some.")
    return rows


def _answers(row: Record, where: str) -> tuple[list[str], list[int]]:
    value = row.get("answers")
    if row.get("is_impossible") or value in (None, [], {}):
        return [], []
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
    elif isinstance(value, list) and all(isinstance(a, dict) for a in value):
        texts = [a.get("text") for a in value]
        starts = [a.get("answer_start") for a in value]
    else:
        texts = starts = None
    ok = (
        isinstance(texts, list)
        and isinstance(starts, list)
        and len(texts) == len(starts)
        and all(isinstance(t, str) and t for t in texts)
        and all(isinstance(s, int) and not isinstance(s, bool) for s in starts)
    )
    if not ok:
        raise DataError(
            f'{where} has answers that are neither {{"text": [...], "answer_start": [...]}} nor '
            'a list of {"text", "answer_start"} objects; write them in SQuAD\'s format.'
        )
    return texts, starts


def read_qa_file(path: str | Path, split: str = "training") -> list[Record]:
    """Checked QA records {"id", "question", "context", "answers": {"text", "answer_start"}}.

    Raises:
        DataError: a missing column, an empty question/context, or an answer whose characters
            are not at its answer_start in the context.
    """
    from lmforge.data.tasks import read_rows

    path = Path(path)
    if path.suffix.lower() == ".json" and path.is_file():
        try:
            doc = json.loads(_read_utf8(path) or "[]")
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).") from None
        rows = _flatten_squad(doc, path) if isinstance(doc, dict) else read_rows(path, split)
    else:
        rows = read_rows(path, split)
    if not rows:
        raise DataError(
            f"the {split} file {path} holds no examples; add rows with context, question and "
            "answers."
        )
    records = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        for column in ("context", "question"):
            if not isinstance(row.get(column), str) or not row[column].strip():
                found = ", ".join(repr(k) for k in row) or "none"
                raise DataError(
                    f"{where} has no text in '{column}' (columns found: {found}); the qa task "
                    "reads context, question and answers (SQuAD format)."
                )
        texts, starts = _answers(row, where)
        context = row["context"]
        for text, start in zip(texts, starts, strict=True):
            if context[start : start + len(text)] != text:
                raise DataError(
                    f"{where} has the answer {text!r} at answer_start {start}, but the context "
                    f"there reads {context[start : start + len(text)]!r}; fix the offset."
                )
        records.append(
            {
                "id": str(row.get("id", i)),
                "question": row["question"],
                "context": context,
                "answers": {"text": texts, "answer_start": starts},
            }
        )
    return records


# --------------------------------------------------------------------------- windows
@dataclass
class QAWindow:
    """One model input of one example (see the module docstring).

    Attributes:
        input_ids, token_type_ids: the window's tokens.
        offsets: per position, the (start, end) characters of a context token, else None.
        example: index of the record it came from.
        start, end: the answer's token positions in this window (0, 0 when it holds none).
    """

    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    example: int
    start: int = 0
    end: int = 0


def _answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last context tokens overlapping characters [start, end) (None if no token
    does, as for an answer of whitespace only)."""
    inside = [t for t, (s, e) in enumerate(offsets) if e > start and s < end]
    return (inside[0], inside[-1]) if inside else None


def qa_windows(
    tokenizer,
    records: list[Record],
    max_len: int,
    doc_stride: int = 128,
    max_query_len: int = 64,
) -> list[QAWindow]:
    """Encode QA records into overlapping windows with answer positions (module docstring).

    Args:
        tokenizer: an lmforge `Tokenizer` (its backend gives the character offsets).
        records: from `read_qa_file`.
        max_len: tokens per window, special tokens included.
        doc_stride: context tokens shared by consecutive windows (lowered to half the window's
            context budget when larger).
        max_query_len: a longer question keeps its first max_query_len tokens.
    """
    from lmforge.data.task_batches import markers

    start_id, sep = markers(tokenizer)
    n_special = (start_id is not None) + 2 * (sep is not None)
    questions = tokenizer.encode_batch([r["question"] for r in records])
    contexts = tokenizer.backend.encode_batch(
        [r["context"] for r in records], add_special_tokens=False
    )
    out: list[QAWindow] = []
    for k, (record, q, enc) in enumerate(zip(records, questions, contexts, strict=True)):
        q = q[: min(max_query_len, max(1, max_len // 2))]
        budget = max_len - len(q) - n_special
        if budget < 1:
            raise DataError(f"max_len={max_len} leaves no room for the context; raise it.")
        overlap = min(doc_stride, budget // 2)
        ids, offsets = enc.ids, [tuple(o) for o in enc.offsets]
        head = ([start_id] if start_id is not None else []) + q + ([sep] if sep is not None else [])
        answer = None
        if record["answers"]["text"]:
            s_char = record["answers"]["answer_start"][0]
            e_char = s_char + len(record["answers"]["text"][0])
            answer = _answer_tokens(offsets, s_char, e_char)
        a = 0
        while True:
            b = min(a + budget, len(ids))
            tail = [sep] if sep is not None else []
            window_ids = head + ids[a:b] + tail
            types = [0] * len(head) + [1] * (b - a + len(tail))
            window_offsets = [None] * len(head) + offsets[a:b] + [None] * len(tail)
            w = QAWindow(window_ids, types, window_offsets, k)
            if answer is not None and a <= answer[0] and answer[1] < b:
                w.start, w.end = len(head) + answer[0] - a, len(head) + answer[1] - a
            out.append(w)
            if b >= len(ids):
                break
            a += budget - overlap
    return out


def qa_collate(windows: list[QAWindow], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids, token_type_ids, attention_mask and labels (B, 2) = (start, end)."""
    width = max(len(w.input_ids) for w in windows)
    n = len(windows)
    batch = {
        "input_ids": torch.full((n, width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, width), dtype=torch.long),
        "token_type_ids": torch.zeros((n, width), dtype=torch.long),
        "labels": torch.tensor([[w.start, w.end] for w in windows], dtype=torch.long),
    }
    for row, w in enumerate(windows):
        t = len(w.input_ids)
        batch["input_ids"][row, :t] = torch.tensor(w.input_ids)
        batch["token_type_ids"][row, :t] = torch.tensor(w.token_type_ids)
        batch["attention_mask"][row, :t] = 1
    return batch


# --------------------------------------------------------------------------- answers
def best_answers(
    records: list[Record],
    windows: list[QAWindow],
    start_logits: list[list[float]],
    end_logits: list[list[float]],
    *,
    max_answer_len: int = 30,
    n_best: int = 20,
    allow_null: bool = False,
) -> list[str]:
    """The predicted answer text of every record from its windows' logits (module docstring)."""
    best: list[tuple[float, str]] = [(float("-inf"), "") for _ in records]
    null: list[float] = [float("inf") for _ in records]
    for w, s_log, e_log in zip(windows, start_logits, end_logits, strict=True):
        k = w.example
        null[k] = min(null[k], s_log[0] + e_log[0])
        context = [i for i, o in enumerate(w.offsets) if o is not None]
        if not context:
            continue
        starts = sorted(context, key=lambda i: -s_log[i])[:n_best]
        ends = sorted(context, key=lambda i: -e_log[i])[:n_best]
        for i in starts:
            for j in ends:
                if j < i or j - i + 1 > max_answer_len:
                    continue
                score = s_log[i] + e_log[j]
                if score > best[k][0]:
                    s_char, e_char = w.offsets[i][0], w.offsets[j][1]
                    best[k] = (score, records[k]["context"][s_char:e_char].strip())
    out = []
    for (score, text), null_score in zip(best, null, strict=True):
        out.append("" if allow_null and null_score > score else text)
    return out
