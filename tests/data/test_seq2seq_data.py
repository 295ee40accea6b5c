"""Seq2seq data: JSONL pairs, padding/labels, T5 span corruption and its sentinels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.mlm import IGNORE
from lmforge.data.seq2seq import (
    Seq2SeqPairs,
    SpanCorruption,
    add_sentinels,
    collate,
    has_pairs,
    read_pairs,
    span_corrupt,
    span_count,
    split_pairs,
)
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer, train_tokenizer

SENTINELS = list(range(1000, 1100))
EOS, PAD, START = 1, 0, 0


def _reassemble(source: np.ndarray, target: np.ndarray) -> list[int]:
    """Put every span of the target back in place of its sentinel in the source."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in target.tolist():
        if t in SENTINELS:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    out = []
    for s in source.tolist():
        out.extend(spans[s] if s in SENTINELS else [s])
    return out


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(2, 999), min_size=2, max_size=300),
    density=st.floats(0.05, 0.5),
    mean_span=st.floats(1.0, 5.0),
    seed=st.integers(0, 2**31),
)
def test_span_corruption_round_trip(ids, density, mean_span, seed):
    rng = np.random.default_rng(seed)
    source, target = span_corrupt(ids, density, mean_span, SENTINELS, rng)
    assert _reassemble(source, target) == ids
    n_noise, n_spans = span_count(len(ids), density, mean_span)
    assert [t for t in target.tolist() if t in SENTINELS] == SENTINELS[:n_spans]
    assert [s for s in source.tolist() if s in SENTINELS] == SENTINELS[:n_spans]
    assert len(target) == n_noise + n_spans
    assert len(source) == len(ids) - n_noise + n_spans
    assert source[0] not in SENTINELS  # T5 starts with a kept span


def test_span_corruption_statistics():
    rng = np.random.default_rng(0)
    dropped, spans = 0, 0
    for _ in range(200):
        source, target = span_corrupt(np.arange(2, 502), 0.15, 3.0, SENTINELS, rng)
        n = sum(t in SENTINELS for t in target.tolist())
        spans += n
        dropped += len(target) - n
    assert dropped / (200 * 500) == pytest.approx(0.15, abs=0.005)
    assert dropped / spans == pytest.approx(3.0, abs=0.1)


def test_collate_pads_and_shifts():
    batch = collate(
        [(np.array([5, 6, 7]), np.array([8, 9])), (np.array([5]), np.array([8]))], EOS, PAD, START
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS], [5, EOS, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["decoder_input_ids"].tolist() == [[START, 8, 9], [START, 8, PAD]]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[8, 9, EOS], [8, EOS, IGNORE]]


def _write(path: Path, records) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_read_pairs_and_split(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"source": f"s{i}", "target": f"t{i}"} for i in range(20)])
    pairs = read_pairs(path)
    assert pairs[3] == ("s3", "t3") and len(pairs) == 20
    assert has_pairs([tmp_path]) and not has_pairs([_write(tmp_path / "t.jsonl", [{"text": "x"}])])
    train, valid = split_pairs(pairs, 0.1, seed=0)
    assert len(valid) == 2 and sorted(train + valid) == sorted(pairs)


def test_read_pairs_names_the_line_and_the_fields(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"source": "a", "target": "b"}, {"src": "a", "tgt": "b"}])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    message = str(err.value)
    assert f"{path}:2" in message and "'src', 'tgt'" in message and '"source"' in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    (tmp_path / "bad.jsonl").write_text("{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:1 is not valid JSON"):
        read_pairs(tmp_path / "bad.jsonl")


def test_seq2seq_pairs_truncate_with_a_counted_warning():
    examples = [(list(range(2, 30)), [3, 4]), ([5, 6], [7] * 3), ([5], list(range(2, 12)))]
    with pytest.warns(UserWarning, match="2 of 3 training pairs"):
        data = Seq2SeqPairs(examples, 2, max_len=8, eos_id=EOS, pad_id=PAD, decoder_start_id=START)
    batch = data.batch(0)
    assert batch["input_ids"].shape[1] <= 8 and batch["labels"].shape[1] <= 8
    again = Seq2SeqPairs(examples, 2, max_len=64, eos_id=EOS, pad_id=PAD, decoder_start_id=START)
    assert sum(len(b["labels"]) for b in again.sequential()) == 3


def test_sentinels_are_added_special_tokens(tmp_path):
    tok = train_tokenizer(["some plain text for a tokenizer"] * 5, vocab_size=300)
    size = tok.vocab_size
    with_sent, ids = add_sentinels(tok, 4)
    assert tok.vocab_size == size  # the given tokenizer is left as it was
    assert ids == list(range(size, size + 4)) and with_sent.vocab_size == size + 4
    assert set(ids) <= with_sent.special_ids
    assert not set(with_sent.encode("extra_id text <extra id 0>")) & set(ids)
    assert with_sent.encode("<extra_id_2>") == [ids[2]]
    with_sent.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert add_sentinels(loaded, 4)[1] == ids  # already there: nothing added
    assert loaded.decode([ids[0], *tok.encode("text")]) == "text"


def test_span_corruption_batches_fit_the_window():
    tokens = np.arange(10, 2010, dtype=np.uint16)
    data = SpanCorruption(
        tokens, 4, window=63, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, decoder_start_id=START
    )
    batch = data.batch(0)
    assert batch["input_ids"].shape[1] <= 64 and batch["labels"].shape[1] <= 64
    assert torch.equal(batch["input_ids"], data.batch(0)["input_ids"])  # seekable
    source = batch["input_ids"][0][batch["attention_mask"][0].bool()].numpy()[:-1]
    target = batch["labels"][0][batch["labels"][0] != IGNORE].numpy()[:-1]
    restored = _reassemble(source, target)
    assert restored == list(range(restored[0], restored[0] + 63))  # a real window, restored
    assert len(list(data.sequential())) == (2000 // 63 + 3) // 4
