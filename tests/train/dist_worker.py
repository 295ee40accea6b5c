"""Run by tests under torchrun: a tiny gpt trained with a given strategy and global batch."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.models import Transformer
from lmforge.objectives import CausalLMLoss
from lmforge.train import fit


class Crash(Exception):
    """Simulates a run killed right after a given step."""


def main(
    out: str,
    strategy: str,
    per_rank_batch: int,
    crash_after: int,
    resume: bool,
    save_every: int = 4,
    max_steps: int = 8,
) -> None:
    """Train max_steps (checkpoints every save_every); with crash_after > 0, die after that step."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(5, 60, size=37), 300).astype(np.uint16)
    data = TokenWindows(tokens, seq_len=32, batch_size=per_rank_batch, seed=0)
    model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64))
    cfg = TrainConfig(
        max_steps=max_steps, eval_every=4, eval_batches=1, log_every=1, lr=3e-3, warmup_steps=2,
        device="cpu", strategy=strategy, deterministic=True, save_every=save_every, keep_last=2,
    )  # fmt: skip

    def on_log(record: dict) -> None:
        if crash_after and record["step"] == crash_after:
            raise Crash

    try:
        fit(
            model,
            CausalLMLoss(int(os.environ.get("CHUNK_VOCAB", "0"))),  # 0: full logits
            data,
            lambda: data.sequential(1),
            cfg,
            out,
            resume=resume,
            progress=False,
            on_log=on_log,
        )
    except Crash:
        pass


if __name__ == "__main__":
    out, strategy, batch, crash_after, resume = sys.argv[1:6]
    extra = [int(x) for x in sys.argv[6:8]]
    main(out, strategy, int(batch), int(crash_after), resume == "1", *extra)
