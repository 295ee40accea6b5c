"""Tiny model dirs for the knowledge tests: a random bert-tiny (embeddings) and gpt-tiny (text),
with small tokenizers trained on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kn_helpers import FACTS

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer


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
