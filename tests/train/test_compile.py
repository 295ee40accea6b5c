"""`compile=true`: the compiled training step (inductor) follows the eager one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.models import Transformer
from lmforge.objectives import CausalLMLoss
from lmforge.train import fit


def _losses(tmp_path, compile: bool, chunk_vocab: int) -> list[float]:
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(5, 60, size=37), 300).astype(np.uint16)
    data = TokenWindows(tokens, seq_len=32, batch_size=8, seed=0)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("llama-tiny", vocab_size=64))
    cfg = TrainConfig(
        max_steps=4, eval_every=100, log_every=1, lr=3e-3, warmup_steps=1, device="cpu",
        precision="fp32", compile=compile,
    )  # fmt: skip
    logs: list[dict] = []
    out = tmp_path / f"compile-{compile}"
    fit(model, CausalLMLoss(chunk_vocab), data, None, cfg, out, progress=False, on_log=logs.append)
    return [r["loss"] for r in logs]


@pytest.mark.slow
def test_compiled_train_steps_match_eager(tmp_path):
    """Four steps of eager training with full logits against four compiled ones with the
    chunked LM-head loss (compiled model, eager chunked loss): the same losses."""
    eager = _losses(tmp_path, compile=False, chunk_vocab=0)
    compiled = _losses(tmp_path, compile=True, chunk_vocab=64)
    assert len(eager) == len(compiled) == 4
    assert eager[-1] < eager[0]
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)
