"""Tiny random models for the prompting tests: a BERT with a WordPiece tokenizer and a GPT with a
byte-level BPE tokenizer, both trained on the fly on a small review-like corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prompt_helpers import REVIEWS, corpus, write_jsonl

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """An lmforge bert-tiny (encoder + MLM/NSP heads), random weights, WordPiece tokenizer."""
    tok = train_tokenizer(corpus(), vocab_size=200, kind="wordpiece", lowercase=True)
    cfg = ModelConfig.from_preset("bert-tiny", vocab_size=tok.vocab_size, dropout=0.0)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    save_model(Transformer(cfg), out)
    tok.save(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt(tmp_path_factory) -> Path:
    """An lmforge gpt-tiny (decoder + LM head), random weights, byte-level BPE tokenizer."""
    tok = train_tokenizer(corpus(), vocab_size=300, kind="bpe")
    cfg = ModelConfig.from_preset(
        "gpt-tiny", vocab_size=tok.vocab_size, dropout=0.0, max_seq_len=256
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_gpt")
    save_model(Transformer(cfg), out)
    tok.save(out)
    return out


@pytest.fixture()
def reviews_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "reviews.jsonl", [{"text": t, "label": y} for t, y in REVIEWS])
