"""Token shards into pretraining: `pretrain --data shards/` with exact resume, rank slices, the
tokenizer and resume checks; `data prepare` holding out validation text from a one-file corpus
and streaming files piece by piece."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.data import default_corpus, read_documents, shard_prepare, sources
from lmforge.data.shards import ShardedTokens, ShardWindows, prepare_shards
from lmforge.errors import ConfigError, DataError
from lmforge.recipes.pretrain import pretrain
from lmforge.tokenizer import train_tokenizer

TINY = {
    "max_steps": 6,
    "eval_every": 3,
    "eval_batches": 2,
    "log_every": 1,
    "batch_size": 4,
    "seq_len": 32,
    "lr": 3e-3,
    "warmup_steps": 2,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    tok = train_tokenizer(default_corpus()[:20], vocab_size=300)
    return tok.save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def shards(tok_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(default_corpus()[:30]):
        (corpus / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    return prepare_shards(corpus, tok_dir, tmp_path_factory.mktemp("shards"), valid_fraction=0.1)


def _losses(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def test_pretrain_on_shards_resumes_exactly(shards, tmp_path):
    full = pretrain([shards], tmp_path / "a", preset="gpt-tiny", overrides=TINY, progress=False)
    assert full.train_tokens == len(ShardedTokens(shards).split("train"))
    assert full.valid_tokens > 0 and full.eval_ppl is not None and full.unigram_ppl is not None
    # the same run stopped after step 3 (its checkpoint), then resumed to step 6
    half = {**TINY, "max_steps": 3}
    pretrain([shards], tmp_path / "b", preset="gpt-tiny", overrides=half, progress=False)
    pretrain(
        [shards], tmp_path / "b", preset="gpt-tiny", overrides=TINY, resume=True, progress=False
    )
    assert _losses(tmp_path / "b")[3:] == _losses(tmp_path / "a")[3:]


def test_rank_slices_together_make_the_global_batch(shards):
    split = ShardedTokens(shards).split("train")
    whole = ShardWindows(split, 16, 6).batch(step=5, micro=1)
    parts = [ShardWindows(split, 16, 3).batch(5, 1, rank=r, world=2) for r in (0, 1)]
    joined = np.concatenate([p["input_ids"].numpy() for p in parts])
    np.testing.assert_array_equal(joined, whole["input_ids"].numpy())


def test_a_mismatched_tokenizer_is_refused(shards, tmp_path):
    other = train_tokenizer(default_corpus()[20:30], vocab_size=300).save(tmp_path / "other")
    with pytest.raises(DataError, match="not the tokenizer the shards"):
        pretrain([shards], tmp_path / "r", preset="gpt-tiny", tokenizer_dir=other, overrides=TINY)
    with pytest.raises(ConfigError, match="causal-lm, not mlm-nsp"):
        pretrain([shards], tmp_path / "m", objective="mlm-nsp", overrides=TINY)


def test_resume_refuses_a_changed_config_or_data(shards, tmp_path, tok_dir):
    out = tmp_path / "run"
    short = {**TINY, "max_steps": 3}
    pretrain([shards], out, preset="gpt-tiny", overrides=short, progress=False)
    with pytest.raises(ConfigError, match=r"model n_layer 2 -> 3"):
        over = {**TINY, "n_layer": 3}
        pretrain([shards], out, preset="gpt-tiny", overrides=over, resume=True, progress=False)
    with pytest.raises(ConfigError, match="data changed"):
        pretrain(None, out, preset="gpt-tiny", overrides=TINY, tokenizer_dir=tok_dir, resume=True)


def test_cli_on_shards_and_a_corrupt_resume(shards, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    args = ["lmforge", "pretrain", "--preset", "gpt-tiny", "--data", str(shards)]
    args += ["--out", str(out), "--max-steps", "3"]
    args += [f"{k}={v}" for k, v in TINY.items() if k != "max_steps"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0
    assert "held-out perplexity" in capsys.readouterr().out
    for ckpt in (out / "checkpoints").iterdir():
        (ckpt / "model.safetensors").write_bytes(b"damaged")
    monkeypatch.setattr(sys, "argv", [*args, "--resume"])
    with pytest.raises(SystemExit) as stop, pytest.warns(UserWarning):
        main()
    assert stop.value.code != 0
    assert "every checkpoint" in capsys.readouterr().err


def test_a_one_file_corpus_gets_validation_tokens(tok_dir, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text(default_corpus()[0], encoding="utf-8")  # one document
    m = ShardedTokens(prepare_shards(one, tok_dir, tmp_path / "s1", valid_fraction=0.05)).manifest
    train, valid = m["totals"]["train"]["n_tokens"], m["totals"]["valid"]["n_tokens"]
    assert m["held_out"] == "tail of a document" and valid > 0
    assert abs(valid - 0.05 * (train + valid)) <= 2
    # several documents, none held out by hashing (seed 1): whole documents move from the end
    docs = default_corpus()[:2]
    size = sum(map(len, docs))
    docs.append(" ".join(["a short closing note"] * (size // 700)))  # about 3% of the text
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    sh = ShardedTokens(prepare_shards(many, tok_dir, tmp_path / "s2", valid_fraction=0.03, seed=1))
    assert sh.manifest["held_out"] == "tail documents"
    assert sh.manifest["totals"]["valid"]["n_documents"] == 1
    valid_tokens = sh.split("valid").window(0, len(sh.split("valid")))
    tok = sh.tokenizer()
    assert tok.decode(valid_tokens.tolist()) == docs[-1]
    assert sh.manifest["totals"]["train"]["n_documents"] == 2


def test_files_stream_in_pieces_with_the_same_documents(tmp_path, monkeypatch):
    text = "\ufeff" + "".join(f"paragraph {i} 你好 " * (i % 7 + 1) + "\n\n" for i in range(300))
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    lines = [json.dumps({"text": f"doc {i} é"}) for i in range(50)]
    (tmp_path / "b.jsonl").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(sources, "MAX_DOC_CHARS", 500)
    monkeypatch.setattr(shard_prepare, "_READ_BYTES", 37)  # cuts inside UTF-8 characters
    for name in ("a.txt", "b.jsonl"):
        want = read_documents(tmp_path / name)
        assert list(shard_prepare.stream_documents(tmp_path / name)) == want
    assert len(read_documents(tmp_path / "a.txt")) > 10
    (tmp_path / "bad.txt").write_bytes(b"ok " * 30 + b"\xff")
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(shard_prepare.stream_documents(tmp_path / "bad.txt"))
