"""Multiple choice: one score per option, softmax over the options (SWAG / ARC / HellaSwag style).

Records (`read_choice_file`): {"question", "choices": [...], "label"} with an optional "context"
(a passage read before the question); the label is the index of the right option (0-based) or
its text. Each option becomes one model input

    [CLS] context question [SEP] option [SEP]           token types 0 ... 0 1 ... 1

cut to max_len by shortening the longer part; the head scores each input with one number and
the objective takes softmax over an example's options. Examples may have different numbers of
options: a batch pads to the most options, and padded options are masked out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.errors import DataError

Record = dict[str, Any]


def read_choice_file(path: str | Path, split: str = "training") -> list[Record]:
    """Checked records {"prompt" (context + question), "choices" (list of str), "label" (int)}."""
    from lmforge.data.tasks import read_rows

    rows = read_rows(path, split)
    if not rows:
        raise DataError(
            f"the {split} file {path} holds no examples; add rows with question, choices, label."
        )
    records = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        missing = [c for c in ("question", "choices", "label") if c not in row]
        if missing:
            found = ", ".join(repr(k) for k in row) or "none"
            raise DataError(
                f"the {split} file {path} has no '{missing[0]}' column (columns found: {found}); "
                "the choice task reads question, choices, label and an optional context."
            )
        choices = row["choices"]
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) for c in choices)
        ):
            raise DataError(f"{where} needs 'choices' as a list of at least two strings.")
        label = row["label"]
        if isinstance(label, str) and label in choices:
            label = choices.index(label)
        elif isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise DataError(
                f"{where} has the label {row['label']!r}, which is neither an option's index "
                f"(0..{len(choices) - 1}) nor one of its choices; fix it."
            )
        prompt = " ".join(str(x) for x in (row.get("context"), row["question"]) if x)
        records.append({"prompt": prompt, "choices": choices, "label": label})
    return records


def encode_choice(tokenizer, records: list[Record], max_len: int) -> tuple[list[dict], int]:
    """Features {"options": [{"input_ids", "token_type_ids"}, ...], "labels": int} and the
    number of examples with a cut option."""
    from lmforge.data.task_batches import _budget, _wrap, markers

    start, sep = markers(tokenizer)
    n_special = (start is not None) + 2 * (sep is not None)
    prompts = tokenizer.encode_batch([r["prompt"] for r in records])
    out, cut = [], 0
    for record, prompt in zip(records, prompts, strict=True):
        options, was_cut = [], False
        for option in tokenizer.encode_batch(record["choices"]):
            lengths = _budget([len(prompt), len(option)], max_len - n_special)
            was_cut |= lengths != [len(prompt), len(option)]
            ids, types = _wrap(start, [prompt[: lengths[0]], option[: lengths[1]]], sep)
            options.append({"input_ids": ids, "token_type_ids": types})
        cut += was_cut
        out.append({"options": options, "labels": record["label"]})
    return out, cut


def choice_collate(features: list[dict], pad_id: int) -> dict[str, Tensor]:
    """(B * K, T) inputs (K = most options in the batch), labels (B,), choice_mask (B, K)."""
    k = max(len(f["options"]) for f in features)
    width = max(len(o["input_ids"]) for f in features for o in f["options"])
    n = len(features) * k
    batch = {
        "input_ids": torch.full((n, width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, width), dtype=torch.long),
        "token_type_ids": torch.zeros((n, width), dtype=torch.long),
        "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
        "choice_mask": torch.zeros((len(features), k), dtype=torch.bool),
    }
    for b, f in enumerate(features):
        for j, option in enumerate(f["options"]):
            row, t = b * k + j, len(option["input_ids"])
            batch["input_ids"][row, :t] = torch.tensor(option["input_ids"])
            batch["token_type_ids"][row, :t] = torch.tensor(option["token_type_ids"])
            batch["attention_mask"][row, :t] = 1
            batch["choice_mask"][b, j] = True
        for j in range(len(f["options"]), k):  # a padded option: one token, masked out later
            batch["attention_mask"][b * k + j, 0] = 1
    return batch
