"""Tests for token shards: preparing them (in parallel), checking them, and sampling from them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from typer.testing import CliRunner

from lmforge.cli.data import data_app
from lmforge.data import read_documents, shard_prepare
from lmforge.data.lm import TokenWindows, tokens_from_documents
from lmforge.data.shards import (
    ShardedTokens,
    ShardWindows,
    is_shard_dir,
    prepare_shards,
)
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer, train_tokenizer

_WORDS = "the quick brown fox jumps over a lazy dog while tokens flow into shards".split()
_ZH = ["你好，世界", "语言模型", "数据分片", "词元", "训练与验证"]


def _doc(i: int) -> str:
    words = " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(8 + i % 11))
    return f"Document {i}: {words}. {_ZH[i % len(_ZH)]} {i * 31 % 97}."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of .txt, .md, .jsonl and .json files: 59 documents, 5 KB, some Chinese."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text(_doc(0) + "\n\n" + _doc(1), encoding="utf-8")
    (root / "b.md").write_text("# " + _doc(2), encoding="utf-8")
    lines = [json.dumps({"text": _doc(i)}, ensure_ascii=False) for i in range(3, 50)]
    (root / "sub").mkdir()
    (root / "sub" / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "sub" / "d.json").write_text(
        json.dumps([_doc(i) for i in range(50, 60)], ensure_ascii=False), encoding="utf-8"
    )
    return root


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    tok = train_tokenizer(read_documents(corpus), vocab_size=400)
    return tok.save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def many(corpus, tok_dir, tmp_path_factory) -> Path:
    """Small shards and a held-out split."""
    out = tmp_path_factory.mktemp("many")
    return prepare_shards(corpus, tok_dir, out, shard_tokens=150, valid_fraction=0.2)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _held(doc: str, fraction: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"lmforge-split:{seed}\0".encode() + doc.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


# ----------------------------------------------------------------- preparing


def test_layout_equals_tokens_from_documents(corpus, tok_dir, tmp_path) -> None:
    out = prepare_shards([corpus], tok_dir, tmp_path / "s", valid_fraction=0.0)
    tok = Tokenizer.load(tok_dir)
    expected = tokens_from_documents(tok, read_documents(corpus))
    m = json.loads((out / "manifest.json").read_text())
    assert m["dtype"] == "uint16" and expected.dtype == np.uint16
    assert (m["bos_id"], m["eos_id"], m["vocab_size"]) == (tok.bos_id, tok.eos_id, tok.vocab_size)
    assert [e["file"] for e in m["splits"]["train"]] == ["train-00000.bin"]
    assert m["splits"]["valid"] == []
    got = np.fromfile(out / "train-00000.bin", dtype="<u2")
    np.testing.assert_array_equal(got, expected)
    assert m["totals"]["train"] == {"n_tokens": len(expected), "n_documents": 59, "n_shards": 1}
    assert m["splits"]["train"][0]["sha256"] == hashlib.sha256(got.tobytes()).hexdigest()
    tok_sha = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert m["tokenizer_sha256"] == tok_sha
    assert (out / "tokenizer_config.json").read_bytes() == (
        tok_dir / "tokenizer_config.json"
    ).read_bytes()
    assert ShardedTokens(out).tokenizer().bos_id == tok.bos_id


def test_shards_hold_whole_documents_and_the_held_out_rule(corpus, tok_dir, many) -> None:
    tok = Tokenizer.load(tok_dir)
    docs = read_documents(corpus)
    m = json.loads((many / "manifest.json").read_text())
    for split in ("train", "valid"):
        want = [d for d in docs if _held(d, 0.2) == (split == "valid")]
        entries = m["splits"][split]
        shards = [np.fromfile(many / e["file"], dtype="<u2") for e in entries]
        np.testing.assert_array_equal(np.concatenate(shards), tokens_from_documents(tok, want))
        for e, s in zip(entries, shards, strict=True):
            assert s[0] == tok.bos_id and s[-1] == tok.eos_id and len(s) == e["n_tokens"]
            assert (s == tok.bos_id).sum() == e["n_documents"]
        assert all(e["n_tokens"] >= 150 for e in entries[:-1])
        assert m["totals"][split]["n_documents"] == len(want)
    assert m["totals"]["train"]["n_shards"] > 3 and m["totals"]["valid"]["n_documents"] > 0


def test_workers_give_identical_bytes(corpus, tok_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shard_prepare, "_CHUNK_CHARS", 300)  # many tasks, so order matters
    one = prepare_shards([corpus], tok_dir, tmp_path / "one", shard_tokens=200, valid_fraction=0.1)
    two = prepare_shards(
        [corpus], tok_dir, tmp_path / "two", shard_tokens=200, valid_fraction=0.1, workers=2
    )
    assert _files(one) == _files(two)
    assert len(_files(one)) > 5


def test_uint32_for_a_large_vocabulary(tmp_path) -> None:
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, 70_000)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    roles = {"bos": "<s>", "eos": "</s>", "unk": "[UNK]"}
    tok_dir = Tokenizer(backend, roles=roles).save(tmp_path / "tok")
    (tmp_path / "d.txt").write_text("w5 w69999 w65536 w7", encoding="utf-8")
    out = prepare_shards(tmp_path / "d.txt", tok_dir, tmp_path / "s", valid_fraction=0.0)
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "uint32"
    assert (out / "train-00000.bin").stat().st_size == 6 * 4
    train = ShardedTokens(out, verify=True).split("train")
    assert train.window(0, 6).tolist() == [1, 5, 69999, 65536, 7, 2]


def test_rerun_replaces_an_earlier_shard_folder(corpus, tok_dir, tmp_path) -> None:
    out = prepare_shards(corpus, tok_dir, tmp_path / "s", shard_tokens=100, valid_fraction=0.0)
    assert (out / "train-00003.bin").exists()
    prepare_shards(corpus, tok_dir, out, valid_fraction=0.0)
    assert sorted(p.name for p in out.glob("*.bin")) == ["train-00000.bin"]
    ShardedTokens(out, verify=True)


def test_out_dir_inside_the_data_folder_is_not_read(corpus, tok_dir, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(_doc(1), encoding="utf-8")
    for _ in range(2):  # the second run must not read the first run's JSON files as text
        prepare_shards(data, tok_dir, data / "shards", valid_fraction=0.0)
    assert (
        json.loads((data / "shards" / "manifest.json").read_text())["totals"]["train"][
            "n_documents"
        ]
        == 1
    )


def test_bad_arguments_and_folders(corpus, tok_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        prepare_shards(corpus, tok_dir, tmp_path / "a", workers=0)
    with pytest.raises(ConfigError, match="shard_tokens"):
        prepare_shards(corpus, tok_dir, tmp_path / "a", shard_tokens=0)
    with pytest.raises(ConfigError, match="valid fraction"):
        prepare_shards(corpus, tok_dir, tmp_path / "a", valid_fraction=1.0)
    with pytest.raises(DataError, match="no data paths"):
        prepare_shards([], tok_dir, tmp_path / "a")
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no text found"):
        prepare_shards(tmp_path / "blank.txt", tok_dir, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DataError, match="not token shards"):
        prepare_shards(corpus, tok_dir, tmp_path / "b")
    assert (tmp_path / "b" / "notes.txt").exists()
    assert not is_shard_dir(tok_dir) and not is_shard_dir(tmp_path / "nope")


# ----------------------------------------------------------------- checking


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name, data in _files(src).items():
        (dst / name).write_bytes(data)
    return dst


def test_hash_mismatch_is_found_with_verify(many, tmp_path) -> None:
    d = _copy(many, tmp_path / "d")
    shard = d / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[2] ^= 1
    shard.write_bytes(bytes(data))
    ShardedTokens(d)  # same size: only the hash tells
    with pytest.raises(DataError, match="train-00001.bin does not match its SHA-256"):
        ShardedTokens(d, verify=True)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="train-00001.bin has .* bytes but the manifest says"):
        ShardedTokens(d)


def test_missing_shard_and_bad_manifest_and_tokenizer(many, tmp_path) -> None:
    d = _copy(many, tmp_path / "d")
    (d / "valid-00000.bin").unlink()
    with pytest.raises(DataError, match="valid-00000.bin is listed in the manifest .* but missing"):
        ShardedTokens(d)
    d = _copy(many, tmp_path / "e")
    (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text() + " ")
    with pytest.raises(DataError, match="tokenizer.json does not match"):
        ShardedTokens(d)
    (d / "manifest.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        ShardedTokens(d)
    with pytest.raises(DataError, match="not a token shard folder"):
        ShardedTokens(tmp_path)


# ----------------------------------------------------------------- sampling


def test_batches_are_deterministic_per_seed_and_step(many) -> None:
    a = ShardWindows(ShardedTokens(many).split("train"), seq_len=16, batch_size=4, seed=3)
    b = ShardWindows(ShardedTokens(many).split("train"), seq_len=16, batch_size=4, seed=3)
    c = ShardWindows(ShardedTokens(many).split("train"), seq_len=16, batch_size=4, seed=4)
    x = a.batch(7, micro=1)
    assert x["input_ids"].shape == (4, 16) and x["input_ids"].dtype == torch.int64
    assert torch.equal(x["input_ids"], b.batch(7, micro=1)["input_ids"])  # a resume seeks here
    assert not torch.equal(x["input_ids"], a.batch(8, micro=1)["input_ids"])
    assert not torch.equal(x["input_ids"], c.batch(7, micro=1)["input_ids"])
    assert torch.equal(x["input_ids"][:, 1:], x["labels"][:, :-1])
    wide = ShardWindows(a.split, seq_len=16, batch_size=8, seed=3).batch(7, micro=1)
    for rank in range(2):  # two ranks together see what one process with both halves sees
        part = a.batch(7, micro=1, rank=rank, world=2)["input_ids"]
        assert torch.equal(part, wide["input_ids"][rank * 4 : (rank + 1) * 4])


def test_windows_stay_inside_shards_and_match_the_tokens(many, monkeypatch) -> None:
    split = ShardedTokens(many).split("train")
    flat = np.concatenate([np.asarray(s) for s in split.shards]).astype(np.int64)
    seen: list[int] = []
    window = type(split).window

    def spy(self, start: int, length: int) -> np.ndarray:
        seen.append(start)
        return window(self, start, length)

    monkeypatch.setattr(type(split), "window", spy)
    windows = ShardWindows(split, seq_len=24, batch_size=8, seed=0)
    shards_hit = set()
    for step in range(40):
        seen.clear()
        x = windows.batch(step)
        for row, start in enumerate(seen):
            shard = int(np.searchsorted(split.offsets, start, side="right")) - 1
            assert start + 25 <= split.offsets[shard + 1]  # never crosses a shard boundary
            shards_hit.add(shard)
            assert x["input_ids"][row].tolist() == flat[start : start + 24].tolist()
            assert x["labels"][row].tolist() == flat[start + 1 : start + 25].tolist()
    assert len(shards_hit) > 1
    with pytest.raises(ValueError, match="crosses the end of shard 0"):
        window(split, int(split.lengths[0]) - 3, 5)


def test_one_shard_matches_token_windows(corpus, tok_dir, tmp_path) -> None:
    out = prepare_shards(corpus, tok_dir, tmp_path / "s", valid_fraction=0.0)
    split = ShardedTokens(out).split("train")
    tokens = np.fromfile(out / "train-00000.bin", dtype="<u2")
    ours = ShardWindows(split, seq_len=32, batch_size=4, seed=5)
    ref = TokenWindows(tokens, seq_len=32, batch_size=4, seed=5)
    for step in range(3):
        assert torch.equal(ours.batch(step)["input_ids"], ref.batch(step)["input_ids"])
    for got, want in zip(ours.sequential(), ref.sequential(), strict=True):
        assert torch.equal(got["labels"], want["labels"])


def test_sequential_covers_each_shard_once(many) -> None:
    split = ShardedTokens(many).split("valid")
    windows = ShardWindows(split, seq_len=8, batch_size=3)
    rows = torch.cat([b["input_ids"] for b in windows.sequential()])
    assert len(rows) == sum((int(n) - 1) // 8 for n in split.lengths)
    first = np.asarray(split.shards[0][:8], dtype=np.int64)
    assert rows[0].tolist() == first.tolist()
    assert len(list(windows.sequential(max_batches=2))) == 2


def test_too_short_or_empty_split_is_a_clear_error(many, corpus, tok_dir, tmp_path) -> None:
    with pytest.raises(DataError, match="no shard with one window of seq_len\\+1=1001"):
        ShardWindows(ShardedTokens(many).split("train"), seq_len=1000, batch_size=2)
    out = prepare_shards(corpus, tok_dir, tmp_path / "s", valid_fraction=0.0)
    with pytest.raises(DataError, match="valid split"):
        ShardWindows(ShardedTokens(out).split("valid"), seq_len=8, batch_size=2)


# ----------------------------------------------------------------- CLI


def test_cli_prepare(corpus, tok_dir, tmp_path) -> None:
    out = tmp_path / "shards"
    args = ["prepare", "--data", str(corpus / "a.txt"), "--data", str(corpus / "sub")]
    args += ["--tokenizer", str(tok_dir), "--out", str(out)]
    args += ["--workers", "2", "--shard-tokens", "300"]
    result = CliRunner().invoke(data_app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("prepared ") and "tokens/s" in result.output
    assert is_shard_dir(out)
    m = ShardedTokens(out, verify=True).manifest
    assert (
        m["totals"]["train"]["n_documents"] + m["totals"]["valid"]["n_documents"] == 58
    )  # all but b.md
