"""Fixtures: a tiny fine-tuned bert classifier and a tiny causal LM with text files, built with
the fine-tuning tests' helpers; one thread per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
from ft_helpers import (  # noqa: E402
    FAST,
    classify_rows,
    corpus,
    make_base,
    one_thread,
    write_csv,
    write_jsonl,
)


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def toy_classifier(tmp_path_factory) -> dict[str, Path]:
    """bert-tiny fine-tuned on the toy sentiment task, and its train/valid/test files."""
    from lmforge.recipes.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("compress_cls")
    files = {
        "train": write_csv(root / "train.csv", classify_rows(96, 0)),
        "valid": write_jsonl(root / "valid.jsonl", classify_rows(24, 1)),
        "test": write_csv(root / "test.csv", classify_rows(24, 2)),
    }
    with one_thread():
        base = make_base(root, "bert-tiny", "wordpiece")
        finetune(base, files["train"], root / "ft", FinetuneConfig(task="classify", epochs=4),
                 valid=files["valid"], overrides={**FAST, "eval_every": 12},
                 progress=False)  # fmt: skip
    return {"model": root / "ft", **files}


@pytest.fixture(scope="session")
def toy_lm(tmp_path_factory) -> dict[str, Path]:
    """llama-tiny (grouped-query attention) with text files for training and scoring."""
    root = tmp_path_factory.mktemp("compress_lm")
    text = corpus()
    files = {
        "train": root / "train.txt",
        "test": root / "test.txt",
    }
    files["train"].write_text("\n\n".join(text[:240]), encoding="utf-8")
    files["test"].write_text("\n\n".join(text[240:]), encoding="utf-8")
    with one_thread():
        base = make_base(root, "llama-tiny", "bpe")
    return {"model": base, **files}
