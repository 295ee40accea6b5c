"""`lmforge finetune --task embed` and augmentation (`lmforge augment`, `finetune --augment`),
on tiny random models."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_cli  # noqa: E402

from lmforge.data.augment import (  # noqa: E402
    augment_records,
    augment_text,
    random_delete,
    random_swap,
    synonym_replace,
)
from lmforge.errors import CheckpointError, ConfigError  # noqa: E402
from lmforge.recipes.augment import EmbeddingNeighbours, MaskedLMContext  # noqa: E402
from lmforge.recipes.finetune_embed import finetune_embed  # noqa: E402

FAST = {"batch_size": 4, "lr": 1e-3, "device": "cpu", "precision": "fp32", "seed": 0}
SYN = {"great": ["fine", "grand"], "movie": ["film"]}.get


def _pairs(path: Path, n: int) -> Path:
    names = ["France", "Japan", "Peru", "Chad", "Fiji", "Oman", "Laos", "Mali"]
    rows = [{"query": f"capital of {c}?", "positive": f"The capital of {c} is a city.",
             "negatives": [f"The capital of {names[(i + 1) % 8]} is a city."]}
            for i, c in enumerate(names[:n])]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_finetune_embed_trains_and_scores_before_and_after(tmp_path, bert_dir):
    train, test = _pairs(tmp_path / "train.jsonl", 8), _pairs(tmp_path / "test.jsonl", 4)
    r = finetune_embed(bert_dir, train, tmp_path / "run", test=test, progress=False,
                       overrides={**FAST, "max_steps": 4})  # fmt: skip
    assert r.train.steps == 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for when in ("before", "after"):
        assert set(metrics[when]) == {"valid", "test"}
        assert set(metrics[when]["test"]) == {"recall@1", "recall@5", "recall@10", "mrr"}
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "tokenizer.json").is_file()


def test_finetune_embed_cli_and_bad_pairs(tmp_path, monkeypatch, capsys, bert_dir):
    train = _pairs(tmp_path / "train.jsonl", 8)
    code, out, err = run_cli(monkeypatch, capsys, "finetune", bert_dir, "--task", "embed",
                             "--train", train, "--out", tmp_path / "run", "max_steps=2",
                             "batch_size=4", "loss=negative-sampling", "temperature=0.1")  # fmt: skip
    assert code == 0, err
    assert "valid after: recall@1" in out and "2 steps" in out
    (tmp_path / "bad.jsonl").write_text('{"query": "q"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "finetune", bert_dir, "--task", "embed",
                           "--train", tmp_path / "bad.jsonl", "--out", tmp_path / "r2")  # fmt: skip
    assert code == 2 and "needs a non-empty 'positive' text" in err


def test_eda_operations():
    words = "a great movie with a long and slow middle part".split()
    rng = random.Random(0)
    swapped = random_swap(words, 0.1, rng)
    assert sorted(swapped) == sorted(words) and swapped != words
    kept = random_delete(words, 0.5, random.Random(1))
    assert 0 < len(kept) < len(words) and all(w in words for w in kept)
    assert random_delete(["one"], 0.9, rng) == ["one"]
    replaced = synonym_replace(words, 0.2, random.Random(2), lambda w: SYN(w) or [])
    assert replaced != words and len(replaced) == len(words)
    assert {w for w in replaced if w not in words} <= {"fine", "grand", "film"}


def test_augment_records_is_seeded_and_keeps_labels():
    records = [{"text": "a great movie", "label": "positive"},
               {"text": "a dull and slow movie", "label": "negative"}]  # fmt: skip
    syn = lambda w: SYN(w) or []  # noqa: E731
    one = augment_records(records, 3, seed=7, synonyms=syn)
    assert one == augment_records(records, 3, seed=7, synonyms=syn)
    assert one[:2] == records and len(one) == 2 + 2 * 3
    assert [r["label"] for r in one[2:]] == ["positive"] * 3 + ["negative"] * 3
    assert one != augment_records(records, 3, seed=8, synonyms=syn)
    with pytest.raises(ConfigError, match="unknown augmentation 'shuffle'"):
        augment_records(records, 1, ops=["shuffle"])
    with pytest.raises(ConfigError, match="needs a fill-mask model"):
        augment_text("a b c", random.Random(0), ops=["context"])


def test_model_backed_synonyms_and_context(bert_dir, gpt_dir):
    neighbours = EmbeddingNeighbours(bert_dir, k=3, min_cos=-1.0)
    found = neighbours("capital")
    assert 0 < len(found) <= 3 and "capital" not in found
    assert neighbours("the") == [] and neighbours("capital,") == []  # stopwords, punctuation
    context = MaskedLMContext(bert_dir, k=3)
    words = "the capital of France is Paris".split()
    options = context(words, 1)
    assert len(options) <= 3 and "capital" not in [o.lower() for o in options]
    assert all(o.isalpha() and len(o) >= 3 for o in options)
    augmented = augment_text(" ".join(words), random.Random(0), ["context"], 0.2,
                             contextual=lambda w, i: ["city"])  # fmt: skip
    assert augmented.split().count("city") == 1
    with pytest.raises(CheckpointError, match="no masked-language-model head"):
        MaskedLMContext(gpt_dir)


def test_augment_cli_and_finetune_augment(tmp_path, monkeypatch, capsys, bert_dir):
    data = tmp_path / "d.jsonl"
    rows = [{"text": f"the capital city is great number {i}", "label": "ab"[i % 2]}
            for i in range(12)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(monkeypatch, capsys, "augment", data, "--out", tmp_path / "a.jsonl",
                             "--n", "2", "--model", bert_dir, "--seed", "3")  # fmt: skip
    assert code == 0, err
    assert "wrote 36 rows" in out
    written = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(written) == 36 and written[:12] == rows
    code, _, err = run_cli(monkeypatch, capsys, "augment", data, "--out", tmp_path / "b.jsonl",
                           "--ops", "synonym")  # fmt: skip
    assert code == 2 and "needs --model" in err
    code, out, err = run_cli(monkeypatch, capsys, "finetune", bert_dir, "--task", "classify",
                             "--train", data, "--out", tmp_path / "ft", "--augment", "2",
                             "max_steps=2", "batch_size=8")  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["train_examples"] == (12 - 1) * 3  # 1 held out for validation, 2 copies each
