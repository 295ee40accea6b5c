"""Perplexity of a causal language model on text.

PPL = exp( -(1/N) sum_t log P(x_t | x_<t) ): the exponential of the mean next-token negative
log-likelihood, over non-overlapping windows of the model's context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data import read_documents
from lmforge.data.lm import TokenWindows, tokens_from_documents
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models import load_model
from lmforge.objectives import causal_lm_loss
from lmforge.tokenizer import Tokenizer
from lmforge.train import evaluate_loss
from lmforge.utils.device import resolve_device
from lmforge.utils.progress import bar


@dataclass
class PerplexityResult:
    loss: float  # mean negative log-likelihood, nats per token
    perplexity: float
    tokens: int  # target tokens scored


def perplexity(
    model_dir: str | Path,
    data: list[str | Path],
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> PerplexityResult:
    """Score `data` (text/jsonl files or folders) with the model in `model_dir`; `progress`
    shows a bar (with ETA) over the batches of windows."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    model = load_model(model_dir, resolve_device(device))
    if model.cfg.arch != "decoder":
        raise CheckpointError(
            f"perplexity needs a causal (decoder) model, but {model_dir} is an {model.cfg.arch}."
        )
    tok = Tokenizer.load(model_dir)
    tokens = tokens_from_documents(tok, read_documents(data))
    seq_len = min(seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    seq_len = min(seq_len, len(tokens) - 2) if len(tokens) > 3 else seq_len
    windows = TokenWindows(tokens, seq_len, batch_size, name="evaluation")
    device_ = next(model.parameters()).device
    n_batches = -(-((len(tokens) - 1) // seq_len) // batch_size)
    batches = bar(windows.sequential(), n_batches, "perplexity", enabled=progress)
    with torch.no_grad():
        result = evaluate_loss(model, causal_lm_loss, batches, device_)
    n = ((len(tokens) - 1) // seq_len) * seq_len
    return PerplexityResult(result["eval_loss"], math.exp(result["eval_loss"]), n)
