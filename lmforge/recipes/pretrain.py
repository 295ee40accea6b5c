"""Pretraining from scratch: documents -> tokenizer -> token windows -> model -> `fit`.

`pretrain()` is what `lmforge pretrain` calls; a notebook can call it the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.config import ModelConfig
from lmforge.config.train import (
    TrainConfig,
    load_config_file,
    make_train_config,
    split_values,
)
from lmforge.data import default_corpus, read_documents, split_documents
from lmforge.data.lm import TokenWindows, tokens_from_documents, unigram_perplexity
from lmforge.errors import ConfigError
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.train import TrainResult, fit
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.utils.fs import atomic_write_text


@dataclass
class PretrainResult:
    out_dir: Path
    train: TrainResult
    model_config: ModelConfig
    train_config: TrainConfig
    n_params: int
    train_tokens: int
    valid_tokens: int
    unigram_ppl: float
    eval_ppl: float | None


def resolve_configs(
    preset: str, config_file: str | Path | None, overrides: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any]]:
    """Merge a YAML/JSON file and key=value overrides (overrides win) into a TrainConfig and
    the model-config values to apply on top of the preset."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config_file(config_file))
    file_model = values.pop("model", None)
    preset = values.pop("preset", preset)
    merged = dict(values)
    if isinstance(file_model, dict):
        merged.update({f"model.{k}": v for k, v in file_model.items()})
    merged.update(overrides)
    train_values, model_values = split_values(merged)
    model_values["__preset__"] = preset
    return make_train_config(train_values), model_values


def _model_config(
    model_values: dict[str, Any], tok: Tokenizer, resume_dir: Path | None
) -> ModelConfig:
    if resume_dir is not None:
        return ModelConfig.from_dir(resume_dir)
    values = dict(model_values)
    preset = values.pop("__preset__")
    vocab = values.pop("vocab_size", tok.vocab_size)
    if vocab < tok.vocab_size:
        raise ConfigError(
            f"model vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size}; "
            "drop the override or train a smaller tokenizer."
        )
    specials = {
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "mask_id": tok.mask_id,
    }
    return ModelConfig.from_preset(preset, vocab_size=vocab, **specials, **values)


def pretrain(
    data: list[str | Path] | None,
    out_dir: str | Path,
    *,
    preset: str = "gpt-mini",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    tokenizer_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain a causal language model.

    Args:
        data: text/jsonl files or folders; None uses the embedded default corpus.
        out_dir: the run dir (model files, tokenizer, checkpoints, metrics.jsonl, loss.png).
        preset: a model preset name (see `lmforge presets`).
        config_file: YAML/JSON with train keys and a `model:` mapping.
        overrides: {"key": value} for any train or model field ("model.key" also accepted).
        tokenizer_dir: use this tokenizer instead of training one.
        resume: continue from the newest complete checkpoint in out_dir/checkpoints.
        progress: show a progress bar.
    """
    out_dir = Path(out_dir)
    cfg, model_values = resolve_configs(preset, config_file, overrides or {})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    docs = read_documents(data) if data else default_corpus()
    train_docs, valid_docs = split_documents(docs, cfg.valid_fraction, seed=cfg.seed)

    resume_dir = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if tokenizer_dir is not None:
        tok = Tokenizer.load(tokenizer_dir)
    elif resume_dir is not None and (out_dir / "tokenizer.json").is_file():
        tok = Tokenizer.load(out_dir)
    else:
        tok = train_tokenizer(train_docs, vocab_size=cfg.vocab_size, kind="bpe")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir)

    mcfg = _model_config(model_values, tok, resume_dir)
    seq_len = cfg.seq_len or mcfg.max_seq_len
    if seq_len > mcfg.max_seq_len:
        raise ConfigError(
            f"seq_len={seq_len} is longer than the model's max_seq_len={mcfg.max_seq_len}; "
            "lower seq_len or raise max_seq_len."
        )
    train_tokens = tokens_from_documents(tok, train_docs)
    valid_tokens = tokens_from_documents(tok, valid_docs)
    train_data = TokenWindows(train_tokens, seq_len, cfg.batch_size, seed=cfg.seed)
    valid_data = TokenWindows(valid_tokens, seq_len, cfg.batch_size, seed=cfg.seed, name="held-out")

    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg)
    result = fit(
        model,
        causal_lm_loss,
        train_data,
        lambda: valid_data.sequential(cfg.eval_batches),
        cfg,
        out_dir,
        resume=resume,
        save_extra=tok.save,
        progress=progress,
    )
    unigram = unigram_perplexity(train_tokens, valid_tokens, tok.vocab_size)
    best_ppl = (
        None if result.best_eval_loss is None else float(torch.tensor(result.best_eval_loss).exp())
    )
    summary = {
        "steps": result.steps,
        "n_params": model.num_parameters(),
        "train_tokens": int(len(train_tokens)),
        "valid_tokens": int(len(valid_tokens)),
        "best_eval_loss": result.best_eval_loss,
        "best_eval_ppl": best_ppl,
        "unigram_ppl": unigram,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return PretrainResult(
        out_dir,
        result,
        mcfg,
        cfg,
        model.num_parameters(),
        len(train_tokens),
        len(valid_tokens),
        unigram,
        best_ppl,
    )
