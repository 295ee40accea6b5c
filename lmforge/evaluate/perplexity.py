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
    seq_len: int = 0  # the window each token is scored in (its context is at most this long)


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
    return PerplexityResult(result["eval_loss"], math.exp(result["eval_loss"]), n, seq_len)


def write_perplexity_report(
    result: PerplexityResult,
    model_dir: str | Path,
    data: list[str | Path],
    out_dir: str | Path | None = None,
) -> list[Path]:
    """Write the scores as `<data stem>-report.json` and `.md` (stem `perplexity` for several
    data paths) into `out_dir`, by default the model dir, as `evaluate_finetuned` does.

    Returns:
        the paths written (Markdown, then JSON).
    """
    import json

    from lmforge.evaluate.report import write_report
    from lmforge.utils.fs import atomic_write_text

    paths = [Path(p) for p in data]
    out = Path(out_dir) if out_dir is not None else Path(model_dir)
    stem = paths[0].stem if len(paths) == 1 else "perplexity"
    scores = {
        "perplexity": result.perplexity,
        "loss": result.loss,
        "tokens": result.tokens,
        "seq_len": result.seq_len,
        "data": [str(p) for p in paths],
    }
    names = ", ".join(p.name for p in paths)
    listed = "\n".join(f"- `{p}`" for p in paths)
    extra = f"\nLoss in nats per token; scored on:\n\n{listed}\n"
    written = write_report(scores, "perplexity", out, stem, f"{Path(model_dir).name} on {names}",
                           extra)  # fmt: skip
    atomic_write_text(out / f"{stem}-report.json", json.dumps(scores, indent=2) + "\n")
    return [*written, out / f"{stem}-report.json"]
