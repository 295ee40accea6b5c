"""Pretraining: documents -> tokenizer -> batches for an objective -> model -> `fit`.

From scratch by default; with `init_from` it is continued (domain) pretraining: the model and its
tokenizer start from an existing model dir and train on new text with the same objective.

    objective   preset arch       tokenizer   batches                              loss
    causal-lm   decoder           bpe         TokenWindows (next token)            causal_lm_loss
    mlm-nsp     encoder           wordpiece   NSPPairs (80/10/10 masking + NSP)    mlm_nsp_loss
    seq2seq     encoder-decoder   bpe         Seq2SeqPairs (JSONL source/target)   seq2seq_loss
                                              or SpanCorruption (T5, plain text)

`pretrain()` is what `lmforge pretrain` calls; a notebook can call it the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from lmforge.data.mlm import NSPPairs, special_ids
from lmforge.data.seq2seq import (
    Seq2SeqPairs,
    SpanCorruption,
    add_sentinels,
    has_pairs,
    read_pairs,
    span_count,
    split_pairs,
)
from lmforge.data.shards import ShardedTokens, ShardWindows, is_shard_dir, tokenizer_fingerprint
from lmforge.errors import CheckpointError, ConfigError, DataError, TokenizerError, did_you_mean
from lmforge.models import Transformer, is_model_dir, load_model
from lmforge.objectives import CausalLMLoss, mlm_nsp_loss, seq2seq_loss
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.train import TrainResult, fit
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.distributed import process_group
from lmforge.utils.device import resolve_device
from lmforge.utils.fs import atomic_write_text, prepare_out_dir

Objective = Literal["causal-lm", "mlm-nsp", "seq2seq"]
#: objective -> (the arch it trains, the preset used when none is named)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "causal-lm": ("decoder", "gpt-mini"),
    "mlm-nsp": ("encoder", "bert-mini"),
    "seq2seq": ("encoder-decoder", "t5-mini"),
}


@dataclass
class PretrainResult:
    out_dir: Path
    train: TrainResult
    model_config: ModelConfig
    train_config: TrainConfig
    n_params: int
    train_tokens: int
    valid_tokens: int
    unigram_ppl: float | None  # the context-free baseline (causal-lm only)
    eval_ppl: float | None  # exp(best held-out loss); exp(MLM loss) for mlm-nsp
    objective: str = "causal-lm"
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the best evaluation's record


@dataclass
class _Data:
    loss: Any
    train: Any
    valid: Any
    train_tokens: int
    valid_tokens: int
    unigram_ppl: float | None = None


def resolve_configs(
    preset: str | None, config_file: str | Path | None, overrides: dict[str, Any]
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


def _model_config(model_values: dict[str, Any], tok: Tokenizer, **specials: Any) -> ModelConfig:
    values = dict(model_values)
    preset = values.pop("__preset__")
    vocab = values.pop("vocab_size", tok.vocab_size)
    if vocab < tok.vocab_size:
        raise ConfigError(
            f"model vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size}; "
            "drop the override or train a smaller tokenizer."
        )
    ids = {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "mask_id": tok.mask_id}
    ids.update(specials)
    return ModelConfig.from_preset(preset, vocab_size=vocab, **ids, **values)


def _check_objective(objective: str, cfg: ModelConfig, name: str) -> None:
    """One sentence when the model cannot be trained on the objective."""
    arch, example = OBJECTIVES[objective]
    if cfg.arch != arch:
        raise ConfigError(
            f"objective {objective} needs {_a(arch)} {arch} preset such as {example}; "
            f"{name} is {_a(cfg.arch)} {cfg.arch}."
        )
    if objective == "mlm-nsp" and "mlm" not in cfg.heads:
        raise ConfigError(
            f"objective mlm-nsp needs a model with an 'mlm' head, but {name} has heads "
            f"{list(cfg.heads)}; set heads=[mlm, nsp]."
        )


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def pretrain(
    data: list[str | Path] | None,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    objective: Objective = "causal-lm",
    tokenizer_kind: Literal["bpe", "wordpiece"] | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    tokenizer_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
    overwrite: bool = False,
) -> PretrainResult:
    """Pretrain a model on one objective, from scratch or (with `init_from`) continued.

    Args:
        data: text/jsonl files or folders; None uses the embedded default corpus. For
            "seq2seq", JSONL records with "source"/"target" are trained as pairs; plain text
            is trained with T5 span corruption. A token-shard folder made by `lmforge data
            prepare` (causal-lm only) is read memory-mapped with its own tokenizer and split.
        out_dir: the run dir (model files, tokenizer, checkpoints, metrics.jsonl, loss.png).
        preset: a model preset name (see `lmforge presets`); None picks gpt-mini, bert-mini or
            t5-mini by objective.
        objective: "causal-lm" (next token), "mlm-nsp" (BERT: masked LM + next sentence) or
            "seq2seq" (encoder-decoder: pairs or span corruption).
        tokenizer_kind: "bpe" or "wordpiece"; None means wordpiece for mlm-nsp, else bpe.
        config_file: YAML/JSON with train keys and a `model:` mapping.
        overrides: {"key": value} for any train or model field ("model.key" also accepted).
        tokenizer_dir: use this tokenizer instead of training one.
        resume: continue from the newest checkpoint in out_dir/checkpoints; refused when the
            model config, tokenizer or data differ from the run's.
        progress: show a progress bar.
        init_from: a model dir to continue pretraining from (its config, weights and
            tokenizer); `preset` is then ignored and model overrides (say dropout) apply on top.
        overwrite: write into a non-empty `out_dir` that is not a pretrain run, or start a new
            run over an earlier one (its checkpoints are removed).
    """
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective '{objective}'{did_you_mean(str(objective), OBJECTIVES)}; "
            f"choose one of {', '.join(OBJECTIVES)}."
        )
    out_dir = Path(out_dir)
    cfg, model_values = resolve_configs(preset, config_file, overrides or {})
    model_values["__preset__"] = model_values["__preset__"] or OBJECTIVES[objective][1]
    name = model_values["__preset__"]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only rank 0 writes files
    inputs = [*(data or []), tokenizer_dir, init_from]
    # checked now; created and marked once the options are known to be good
    prepare_out_dir(
        out_dir, "pretrain", inputs=inputs, overwrite=overwrite, resume=resume, write=False
    )
    shards = _open_shards(data, objective)
    # every checkpoint holds the run's config.json; the newest complete one tells the model config
    resume_dir = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if init_from is not None:
        init_from = Path(init_from)
        if not is_model_dir(init_from) or not (init_from / "tokenizer.json").is_file():
            raise CheckpointError(
                f"{init_from} is not a model dir with a tokenizer (config.json, "
                "model.safetensors, tokenizer.json); pass the --out dir of a pretrain run or a "
                "converted model."
            )
        name = init_from.name
    # the model config before the tokenizer exists: fail fast on a wrong arch, and know seq_len
    if resume_dir is not None:
        probe = ModelConfig.from_dir(resume_dir)
    elif init_from is not None:
        probe = _init_config(init_from, model_values)
    else:
        probe = _preset_config(model_values)
    _check_objective(objective, probe, name)
    seq_len = cfg.seq_len or probe.max_seq_len
    if seq_len > probe.max_seq_len:
        raise ConfigError(
            f"seq_len={seq_len} is longer than the model's max_seq_len={probe.max_seq_len}; "
            "lower seq_len or raise max_seq_len."
        )

    pairs = shards is None and objective == "seq2seq" and bool(data) and has_pairs(data)
    train_docs = valid_docs = train_pairs = valid_pairs = None
    if shards is not None:
        texts = []
        data_fingerprint = shards.fingerprint()
    elif pairs:
        train_pairs, valid_pairs = split_pairs(read_pairs(data), cfg.valid_fraction, cfg.seed)
        texts = [t for pair in train_pairs for t in pair]
        data_fingerprint = _fingerprint(json.dumps([train_pairs, valid_pairs]))
    else:
        docs = read_documents(data) if data else default_corpus()
        train_docs, valid_docs = split_documents(docs, cfg.valid_fraction, seed=cfg.seed)
        texts = train_docs
        data_fingerprint = _fingerprint(json.dumps([train_docs, valid_docs]))
    n_sentinels = span_count(seq_len - 1)[1] if objective == "seq2seq" and not pairs else 0

    kind = tokenizer_kind or ("wordpiece" if objective == "mlm-nsp" else "bpe")
    if shards is not None:
        tok = shards.tokenizer()
        if tokenizer_dir is not None:
            shards.check_tokenizer(Tokenizer.load(tokenizer_dir), f"--tokenizer {tokenizer_dir}")
        if init_from is not None:
            shards.check_tokenizer(Tokenizer.load(init_from), f"the tokenizer of {init_from}")
    elif tokenizer_dir is not None:
        tok = Tokenizer.load(tokenizer_dir)
    elif init_from is not None and resume_dir is None:
        tok = Tokenizer.load(init_from)
    elif resume_dir is not None and (out_dir / "tokenizer.json").is_file():
        tok = Tokenizer.load(out_dir)
    else:
        tok = train_tokenizer(texts, vocab_size=cfg.vocab_size - n_sentinels, kind=kind)
    sentinels: list[int] = []
    if n_sentinels:
        tok, sentinels = add_sentinels(tok, n_sentinels)

    specials: dict[str, Any] = {}
    if objective == "seq2seq":
        eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
        if eos is None or tok.pad_id is None:
            raise TokenizerError(
                "seq2seq needs an end-of-sequence (or [SEP]) and a padding token, which the "
                "tokenizer lacks; train one with kind='bpe'."
            )
        specials = {"eos_id": eos, "decoder_start_id": tok.pad_id}  # T5: start = pad
    if init_from is not None:
        mcfg = probe if resume_dir is None else _init_config(init_from, model_values)
        if mcfg.vocab_size < tok.vocab_size:
            raise ConfigError(
                f"{init_from} has vocab_size={mcfg.vocab_size}, fewer than the tokenizer's "
                f"{tok.vocab_size} tokens; use the model's own tokenizer."
            )
    else:
        mcfg = _model_config(model_values, tok, **specials)
    _check_objective(objective, mcfg, name)
    prepare_out_dir(out_dir, "pretrain", inputs=inputs, overwrite=overwrite, resume=resume)
    run_fingerprint = {
        "objective": objective,
        "model_config": mcfg.to_dict(),
        "tokenizer": tokenizer_fingerprint(tok),
        "data": data_fingerprint,
    }
    if resume_dir is not None:
        _check_resume(out_dir, resume_dir, run_fingerprint)
    elif main:
        atomic_write_text(out_dir / FINGERPRINT, json.dumps(run_fingerprint, indent=2))
    if main:
        tok.save(out_dir)

    if shards is not None:
        d = _shard_data(shards, seq_len, cfg)
    elif objective == "causal-lm":
        d = _causal_data(tok, train_docs, valid_docs, seq_len, cfg)
    elif objective == "mlm-nsp":
        d = _mlm_data(tok, train_docs, valid_docs, seq_len, cfg)
    elif pairs:
        d = _pair_data(tok, train_pairs, valid_pairs, seq_len, mcfg, cfg)
    else:
        d = _span_data(tok, train_docs, valid_docs, seq_len, mcfg, sentinels, cfg)

    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg)
    if init_from is not None and resume_dir is None:  # on resume the checkpoint has the weights
        model.load_state_dict(load_model(init_from).state_dict())
    with process_group(cfg.strategy, resolve_device(cfg.device)):  # torn down after the run
        result = fit(
            model,
            d.loss,
            d.train,
            None if d.valid is None else lambda: d.valid.sequential(cfg.eval_batches),
            cfg,
            out_dir,
            resume=resume,
            save_extra=tok.save,
            progress=progress,
        )
    result.raise_if_interrupted()
    best = _best_eval(out_dir / "metrics.jsonl", result.best_eval_loss)
    ppl_loss = best.get("eval_mlm_loss") if objective == "mlm-nsp" else result.best_eval_loss
    best_ppl = None if ppl_loss is None else math.exp(min(ppl_loss, 50.0))
    summary = {
        "objective": objective,
        "steps": result.steps,
        "n_params": model.num_parameters(),
        "train_tokens": d.train_tokens,
        "valid_tokens": d.valid_tokens,
        "best_eval_loss": result.best_eval_loss,
        "best_eval_ppl": best_ppl,
        "unigram_ppl": d.unigram_ppl,
    }
    if objective != "causal-lm":
        summary["best_eval"] = best
    if main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
        from lmforge.evaluate.card import finish_run

        finish_run(out_dir)  # hardware.json + report.html
    return PretrainResult(
        out_dir,
        result,
        mcfg,
        cfg,
        model.num_parameters(),
        d.train_tokens,
        d.valid_tokens,
        d.unigram_ppl,
        best_ppl,
        objective,
        best,
    )


FINGERPRINT = "run_fingerprint.json"
#: Tokens read to estimate the unigram baseline of a shard folder (a sample of big corpora).
_UNIGRAM_SAMPLE = 10_000_000


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _open_shards(data: list[str | Path] | None, objective: str) -> ShardedTokens | None:
    """The token-shard folder when `data` is one (made by `lmforge data prepare`), else None."""
    if not data or not any(is_shard_dir(p) for p in data):
        return None
    if len(data) != 1:
        raise DataError(
            "a token-shard folder must be the only --data; prepare all the text into one folder "
            "with `lmforge data prepare`."
        )
    if objective != "causal-lm":
        raise ConfigError(
            f"token shards hold one token stream for causal-lm, not {objective}; pass the text "
            "files as --data instead."
        )
    return ShardedTokens(data[0])


def _check_resume(out_dir: Path, resume_dir: Path, now: dict[str, Any]) -> None:
    """Refuse to resume when the model config, tokenizer or data differ from the run's."""
    before: dict[str, Any] = {"model_config": ModelConfig.from_dir(resume_dir).to_dict()}
    path = out_dir / FINGERPRINT
    if path.is_file():
        before = {**json.loads(path.read_text(encoding="utf-8")), **before}
    diffs = []
    old_cfg, new_cfg = before["model_config"], now["model_config"]
    changed = [k for k in sorted(set(old_cfg) | set(new_cfg)) if old_cfg.get(k) != new_cfg.get(k)]
    diffs += [f"model {k} {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in changed[:4]]
    for key, what in (("objective", "objective"), ("tokenizer", "tokenizer"), ("data", "data")):
        if key in before and before[key] != now[key]:
            shown = f"{before[key]!r} -> {now[key]!r}" if key == "objective" else "changed"
            diffs.append(f"{what} {shown}")
    if diffs:
        raise ConfigError(
            f"--resume would continue {out_dir} with a different setup ({'; '.join(diffs)}); "
            "repeat the run's own options and data, or pass a new --out to start another run."
        )


def _shard_data(shards: ShardedTokens, seq_len: int, cfg: TrainConfig) -> _Data:
    """Memory-mapped windows from a shard folder; the unigram baseline from a sample."""
    train_split, valid_split = shards.split("train"), shards.split("valid")
    train = ShardWindows(train_split, seq_len, cfg.batch_size, seed=cfg.seed, name="training")
    valid = None
    unigram = None
    if len(valid_split) > 0:
        valid = ShardWindows(valid_split, seq_len, cfg.batch_size, seed=cfg.seed, name="held-out")
        sample = [train_split.window(0, min(len(train_split.shards[0]), _UNIGRAM_SAMPLE))]
        held = valid_split.window(0, min(len(valid_split.shards[0]), _UNIGRAM_SAMPLE))
        unigram = unigram_perplexity(sample[0], held, shards.vocab_size)
    return _Data(
        CausalLMLoss(cfg.chunked_ce_vocab),
        train,
        valid,
        len(train_split),
        len(valid_split),
        unigram,
    )


def _init_config(init_from: Path, model_values: dict[str, Any]) -> ModelConfig:
    """The config of the model to continue from, with the run's model overrides applied."""
    values = {k: v for k, v in model_values.items() if k != "__preset__"}
    return ModelConfig.from_dir(init_from).replace(**values)


def _preset_config(model_values: dict[str, Any]) -> ModelConfig:
    values = dict(model_values)
    return ModelConfig.from_preset(values.pop("__preset__"), **values)


def _best_eval(metrics_path: Path, best_loss: float | None) -> dict[str, float]:
    """The eval_* numbers of the evaluation that gave the best held-out loss."""
    if best_loss is None or not metrics_path.is_file():
        return {}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("eval_loss") == best_loss:
            return {k: v for k, v in record.items() if k.startswith("eval_")}
    return {}


def _causal_data(tok, train_docs, valid_docs, seq_len: int, cfg: TrainConfig) -> _Data:
    train_tokens = tokens_from_documents(tok, train_docs)
    valid_tokens = tokens_from_documents(tok, valid_docs)
    return _Data(
        CausalLMLoss(cfg.chunked_ce_vocab),
        TokenWindows(train_tokens, seq_len, cfg.batch_size, seed=cfg.seed),
        TokenWindows(valid_tokens, seq_len, cfg.batch_size, seed=cfg.seed, name="held-out"),
        len(train_tokens),
        len(valid_tokens),
        unigram_perplexity(train_tokens, valid_tokens, tok.vocab_size),
    )


def _mlm_data(tok, train_docs, valid_docs, seq_len: int, cfg: TrainConfig) -> _Data:
    special_ids(tok)  # one clear sentence when the tokenizer lacks [CLS]/[SEP]/[PAD]/[MASK]
    train = NSPPairs.from_texts(tok, train_docs, seq_len, cfg.batch_size, seed=cfg.seed)
    valid = NSPPairs.from_texts(
        tok, valid_docs, seq_len, cfg.batch_size, seed=cfg.seed, name="held-out"
    )
    return _Data(
        mlm_nsp_loss,
        train,
        valid,
        sum(map(len, train.segments)),
        sum(map(len, valid.segments)),
    )


def _pair_data(tok, train_pairs, valid_pairs, seq_len, mcfg, cfg) -> _Data:
    ids = {"eos_id": mcfg.eos_id, "pad_id": mcfg.pad_id, "decoder_start_id": mcfg.decoder_start_id}
    train = Seq2SeqPairs.from_pairs(tok, train_pairs, cfg.batch_size, seq_len, seed=cfg.seed, **ids)
    valid = Seq2SeqPairs.from_pairs(
        tok, valid_pairs, cfg.batch_size, seq_len, seed=cfg.seed, name="held-out", **ids
    )

    def count(d: Seq2SeqPairs) -> int:
        return sum(len(s) + len(t) for s, t in d.examples)

    return _Data(seq2seq_loss, train, valid, count(train), count(valid))


def _span_data(tok, train_docs, valid_docs, seq_len, mcfg, sentinels, cfg) -> _Data:
    ids = {"eos_id": mcfg.eos_id, "pad_id": mcfg.pad_id, "decoder_start_id": mcfg.decoder_start_id}
    train_tokens = tokens_from_documents(tok, train_docs)
    valid_tokens = tokens_from_documents(tok, valid_docs)
    common = {"window": seq_len - 1, "sentinel_ids": sentinels, "seed": cfg.seed, **ids}
    train = SpanCorruption(train_tokens, cfg.batch_size, **common)
    valid = SpanCorruption(valid_tokens, cfg.batch_size, name="held-out", **common)
    return _Data(seq2seq_loss, train, valid, len(train_tokens), len(valid_tokens))
