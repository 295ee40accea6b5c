"""Shared fixtures: small trained artefacts built once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A gpt-tiny pretrained for a few steps on the embedded corpus (model dir with tokenizer)."""
    from lmforge.recipes.pretrain import pretrain

    out = tmp_path_factory.mktemp("tiny_run")
    result = pretrain(
        None,
        out,
        preset="gpt-tiny",
        overrides={
            "max_steps": 150,
            "eval_every": 50,
            "vocab_size": 512,
            "batch_size": 8,
            "seq_len": 64,
            "lr": 3e-3,
            "warmup_steps": 10,
        },
        progress=False,
    )
    return result
