"""Tiny model dirs for the knowledge tests: a random bert-tiny (embeddings) and gpt-tiny (text),
with small tokenizers trained on the fly; and a toy embedding (letter counts) for fast unit tests."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer

FACTS = [
    "The capital of France is Paris. The currency of France is the Euro.",
    "The capital of Japan is Tokyo. The currency of Japan is the Yen.",
    "The capital of Peru is Lima. The currency of Peru is the Sol.",
]


def letters(texts: Sequence[str]) -> torch.Tensor:
    """A toy embedding: unit vectors of letter counts (anagrams embed alike: Frnace = France)."""
    rows = [[t.lower().count(c) for c in string.ascii_lowercase] for t in texts]
    return F.normalize(torch.tensor(rows, dtype=torch.float32) + 1e-6, dim=-1)


def _model(root: Path, preset: str, kind: str) -> Path:
    lines = FACTS * 4 + [f"Question {i}: what is the capital? Answer: a city." for i in range(20)]
    tok = train_tokenizer(lines, vocab_size=200 if kind == "wordpiece" else 300, kind=kind)
    cfg = ModelConfig.from_preset(
        preset,
        vocab_size=tok.vocab_size,
        pad_id=tok.pad_id,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id if tok.eos_id is not None else tok.sep_id,
        max_seq_len=256,
    )
    torch.manual_seed(0)
    out = root / preset
    save_model(Transformer(cfg), out)
    tok.save(out)
    return out


@pytest.fixture(scope="package")
def bert_dir(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("kn"), "bert-tiny", "wordpiece")


@pytest.fixture(scope="package")
def gpt_dir(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("kn"), "gpt-tiny", "bpe")


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
