"""`pretrain(objective=...)`: MLM+NSP on bert-tiny, T5 span corruption and JSONL pairs on
encoder-decoders, each with a falling loss; wrong presets and bad pairs give one sentence."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest

from lmforge.cli import main
from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.recipes.pretrain import pretrain
from lmforge.tokenizer import Tokenizer

TINY = {
    "max_steps": 60,
    "eval_every": 20,
    "eval_batches": 4,
    "log_every": 1,
    "vocab_size": 512,
    "batch_size": 8,
    "seq_len": 64,
    "lr": 3e-3,
    "warmup_steps": 5,
    "device": "cpu",
}


def _records(out_dir):
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_loss_falls(records, drop):
    """Mean of the last 10 training losses `drop` below the first 5; held-out loss too."""
    losses = [r["loss"] for r in records]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    head, tail = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert tail < head - drop, (head, tail)
    assert evals[-1] < losses[0] - drop and evals[-1] <= evals[0], (losses[0], evals)


def test_mlm_nsp_on_bert_tiny(tmp_path):
    r = pretrain(
        None, tmp_path, preset="bert-tiny", objective="mlm-nsp", overrides=TINY, progress=False
    )
    records = _records(tmp_path)
    # 60 steps take a tiny BERT from uniform (ln 512 + ln 2 = 6.9) to about the unigram
    # plateau (6.3); Hugging Face's BertForMaskedLM of the same size does the same
    _assert_loss_falls(records, drop=0.4)
    assert {"mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"} <= set(records[0])
    assert {"eval_mlm_acc", "eval_nsp_acc"} <= set(r.eval_metrics)
    assert r.unigram_ppl is None and r.eval_ppl is not None
    tok = Tokenizer.load(tmp_path)
    cfg = ModelConfig.from_dir(tmp_path)
    assert tok.kind == "wordpiece" and cfg.arch == "encoder"
    assert (cfg.pad_id, cfg.mask_id) == (tok.pad_id, tok.mask_id)
    assert json.loads((tmp_path / "summary.json").read_text())["objective"] == "mlm-nsp"


def test_seq2seq_span_corruption_on_t5_tiny(tmp_path):
    r = pretrain(
        None,
        tmp_path,
        preset="t5-tiny",
        objective="seq2seq",
        overrides={**TINY, "lr": 1e-2},
        progress=False,
    )
    _assert_loss_falls(_records(tmp_path), drop=0.5)
    assert "eval_token_acc" in r.eval_metrics
    tok = Tokenizer.load(tmp_path)
    assert tok.kind == "bpe" and tok.token_to_id("<extra_id_0>") is not None
    cfg = ModelConfig.from_dir(tmp_path)
    assert cfg.vocab_size == tok.vocab_size == 512  # sentinels come out of the vocab budget
    assert cfg.decoder_start_id == cfg.pad_id == tok.pad_id and cfg.eos_id == tok.eos_id


@pytest.fixture()
def pairs_file(tmp_path):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    path = tmp_path / "pairs" / "train.jsonl"
    path.parent.mkdir()
    with path.open("w", encoding="utf-8") as f:
        for _ in range(300):
            source = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
            target = " ".join(reversed(source.split()))
            f.write(json.dumps({"source": source, "target": target}) + "\n")
    return path


def test_seq2seq_jsonl_pairs_on_transformer_tiny(tmp_path, pairs_file):
    settings = {**TINY, "max_steps": 40, "vocab_size": 300}
    r = pretrain(
        [pairs_file.parent], tmp_path / "run", preset="transformer-tiny", objective="seq2seq",
        overrides=settings, progress=False,
    )  # fmt: skip
    _assert_loss_falls(_records(tmp_path / "run"), drop=0.5)
    assert r.model_config.arch == "encoder-decoder"
    assert Tokenizer.load(tmp_path / "run").token_to_id("<extra_id_0>") is None  # pairs: none


@pytest.mark.parametrize(
    ("objective", "preset", "message"),
    [
        ("mlm-nsp", "gpt-tiny", "objective mlm-nsp needs an encoder preset such as bert-mini; gpt-tiny is a decoder."),
        ("seq2seq", "bert-tiny", "objective seq2seq needs an encoder-decoder preset such as t5-mini; bert-tiny is an encoder."),
        ("causal-lm", "t5-tiny", "objective causal-lm needs a decoder preset such as gpt-mini; t5-tiny is an encoder-decoder."),
    ],
)  # fmt: skip
def test_preset_that_does_not_fit_the_objective(tmp_path, objective, preset, message):
    with pytest.raises(ConfigError) as err:
        pretrain(None, tmp_path, preset=preset, objective=objective, progress=False)
    assert str(err.value) == message
    assert not (tmp_path / "tokenizer.json").exists()  # failed before any work


def test_unknown_objective_and_missing_head(tmp_path):
    with pytest.raises(ConfigError, match="unknown objective 'mlm' .*mlm-nsp"):
        pretrain(None, tmp_path, objective="mlm", progress=False)
    with pytest.raises(ConfigError, match="'mlm' head"):
        pretrain(
            None, tmp_path, preset="bert-tiny", objective="mlm-nsp", overrides={"heads": ["nsp"]}
        )


def test_pairs_without_target_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"source": "a", "target": "b"}\n{"source": "c", "answer": "d"}\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"p\.jsonl:2 has no string \"target\" field .*'answer'"):
        pretrain([path], tmp_path / "run", preset="t5-tiny", objective="seq2seq", progress=False)


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["lmforge", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_objective_option(monkeypatch, capsys, tmp_path, pairs_file):
    code, out, err = _cli(
        monkeypatch, capsys, "pretrain", "--objective", "seq2seq", "--preset", "t5-tiny",
        "--data", str(pairs_file), "--out", str(tmp_path / "run"), "--max-steps", "4",
        "eval_every=2", "batch_size=4", "seq_len=32", "vocab_size=300", "device=cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "held-out loss" in out and "token_acc" in out
    code, _, err = _cli(
        monkeypatch,
        capsys,
        "pretrain",
        "--objective",
        "mlm-nsp",
        "--preset",
        "gpt-tiny",
        "--out",
        str(tmp_path / "x"),
    )
    assert (
        code == 2
        and err.strip()
        == "error: objective mlm-nsp needs an encoder preset such as bert-mini; gpt-tiny is a decoder."
    )


def test_continued_pretraining_starts_from_the_model(tmp_path, tiny_run):
    """init_from: same tokenizer and config, step-0 held-out loss = the base model's, and the
    first training losses far below a fresh model's ln(vocab)."""
    from lmforge.evaluate import perplexity

    domain = tmp_path / "domain.txt"
    domain.write_text(
        "\n\n".join(f"Section {i}. The for statement iterates over a sequence." for i in range(200))
    )
    base = tiny_run.out_dir
    out = tmp_path / "continued"
    r = pretrain(
        [domain], out, init_from=base, progress=False,
        overrides={**TINY, "max_steps": 6, "eval_every": 3, "dropout": 0.0},
    )  # fmt: skip
    assert (out / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    base_cfg = ModelConfig.from_dir(base)
    assert r.model_config == base_cfg.replace(dropout=0.0)
    first = _records(out)[0]["loss"]
    assert first < 0.8 * math.log(base_cfg.vocab_size), first
    # the continued model fits the domain text better than the base it started from
    before = perplexity(base, [domain]).loss
    after = perplexity(out, [domain]).loss
    assert after < before


def test_continued_pretraining_needs_a_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not a model dir"):
        pretrain(None, tmp_path / "out", init_from=tmp_path, overrides=TINY, progress=False)
