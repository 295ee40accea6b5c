"""Fixtures: tiny random base models (bert-tiny, gpt-tiny, t5-tiny), a briefly pretrained
gpt-tiny, toy classification files; one thread per test process."""

from __future__ import annotations

from pathlib import Path

import pytest
from ft_helpers import FAST, classify_rows, make_base, one_thread, write_csv, write_jsonl


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Model dirs of random bert-tiny (WordPiece), gpt-tiny and t5-tiny (BPE)."""
    root = tmp_path_factory.mktemp("bases")
    with one_thread():
        return {
            "bert": make_base(root, "bert-tiny", "wordpiece"),
            "gpt": make_base(root, "gpt-tiny", "bpe"),
            "t5": make_base(root, "t5-tiny", "bpe"),
        }


@pytest.fixture(scope="session")
def classify_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classify")
    return {
        "train": write_csv(root / "train.csv", classify_rows(96, 0)),
        "valid": write_jsonl(root / "valid.jsonl", classify_rows(24, 1)),
        "test": write_csv(root / "test.csv", classify_rows(24, 2)),
    }


@pytest.fixture(scope="session")
def gpt_pretrained(bases, tmp_path_factory) -> Path:
    """gpt-tiny trained briefly as a causal LM on toy sentences: features that carry the words,
    as a pretrained base's do (a random base gives LoRA little to adapt)."""
    from lmforge.config.train import TrainConfig
    from lmforge.data.lm import TokenWindows, tokens_from_documents
    from lmforge.models import load_model
    from lmforge.objectives import causal_lm_loss
    from lmforge.tokenizer import Tokenizer
    from lmforge.train import fit

    out = tmp_path_factory.mktemp("gpt_pretrained")
    model, tok = load_model(bases["gpt"]), Tokenizer.load(bases["gpt"])
    tokens = tokens_from_documents(tok, [r["text"] for r in classify_rows(200, 5)])
    cfg = TrainConfig(max_steps=60, lr=3e-3, warmup_steps=5, log_every=60, device="cpu",
                      precision="fp32", weight_decay=0.0)  # fmt: skip
    with one_thread():
        fit(model, causal_lm_loss, TokenWindows(tokens, 32, 16), None, cfg, out, progress=False)
    tok.save(out)
    return out


@pytest.fixture(scope="session")
def bert_classifier(bases, classify_files, tmp_path_factory):
    """bert-tiny fine-tuned in full on the toy sentiment task (reused by later tests)."""
    from lmforge.recipes.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("ft") / "bert-classify"
    fc = FinetuneConfig(task="classify", epochs=6)
    with one_thread():
        return finetune(bases["bert"], classify_files["train"], out, fc,
                        valid=classify_files["valid"], test=classify_files["test"],
                        overrides={**FAST, "eval_every": 12}, progress=False)  # fmt: skip
