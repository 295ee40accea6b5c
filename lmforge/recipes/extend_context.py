"""`lmforge extend-context`: stretch a RoPE model's context by a factor and adapt it briefly.

model dir --(extended_config: pi | ntk | yarn, factor s)--> same weights, new positions
          --(fit: causal LM at s x the old length, activation checkpointing)--> out dir
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.config.train import TrainConfig, make_train_config, split_values
from lmforge.data import default_corpus, read_documents, split_documents
from lmforge.data.lm import TokenWindows, tokens_from_documents
from lmforge.errors import ConfigError
from lmforge.longctx import extended_config
from lmforge.models import Transformer, load_model, save_model
from lmforge.objectives import CausalLMLoss
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainResult, fit

EXTEND_DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,
    "min_lr": 2e-5,
    "warmup_steps": 10,
    "batch_size": 4,
    "eval_batches": 4,
    "activation_checkpointing": True,
}


@dataclass
class ExtendResult:
    out_dir: Path
    max_seq_len: int
    train: TrainResult | None


def extend_context(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    factor: float,
    method: str,
    data: list[str | Path] | None = None,
    steps: int = 200,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> ExtendResult:
    """Extend the model in `model_dir` `factor` times with `method`; fine-tune `steps` steps.

    `steps=0` only rewrites the config (how NTK scaling is meant to be used).
    """
    out_dir = Path(out_dir)
    base = load_model(model_dir)
    tok = Tokenizer.load(model_dir)
    cfg = extended_config(base.cfg, factor, method)
    model = Transformer(cfg)
    model.load_state_dict(base.state_dict())
    if steps == 0:
        save_model(model, out_dir)
        tok.save(out_dir)
        return ExtendResult(out_dir, cfg.max_seq_len, None)
    train_values, model_values = split_values(overrides or {})
    if model_values:
        raise ConfigError(f"extend-context takes train settings only, not {sorted(model_values)}.")
    tcfg: TrainConfig = make_train_config(
        {**EXTEND_DEFAULTS, "eval_every": max(1, steps // 4), **train_values, "max_steps": steps}
    )
    seq_len = tcfg.seq_len or cfg.max_seq_len
    docs = read_documents(data) if data else default_corpus()
    train_docs, valid_docs = split_documents(docs, tcfg.valid_fraction, seed=tcfg.seed)
    train = TokenWindows(
        tokens_from_documents(tok, train_docs), seq_len, tcfg.batch_size, seed=tcfg.seed
    )
    valid = TokenWindows(
        tokens_from_documents(tok, valid_docs),
        seq_len,
        tcfg.batch_size,
        seed=tcfg.seed,
        name="held-out",
    )
    torch.manual_seed(tcfg.seed)
    result = fit(
        model,
        CausalLMLoss(tcfg.chunked_ce_vocab),
        train,
        lambda: valid.sequential(tcfg.eval_batches),
        tcfg,
        out_dir,
        save_extra=tok.save,
        progress=progress,
    )
    result.raise_if_interrupted()
    return ExtendResult(out_dir, cfg.max_seq_len, result)
