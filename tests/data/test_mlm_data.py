"""MLM masking (15%, 80/10/10) and NSP pairs (50/50, IsNext really consecutive, seekable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.mlm import (
    IGNORE,
    IS_NEXT,
    NOT_NEXT,
    NSPPairs,
    mask_tokens,
    pack_segments,
    special_ids,
    split_sentences,
)
from lmforge.errors import DataError
from lmforge.objectives import IGNORE as OBJECTIVE_IGNORE
from lmforge.tokenizer import train_tokenizer

MASK, VOCAB = 4, 1000


def _masked(shape=(64, 512), seed=0, special_share=0.1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, shape, generator=g)
    special = torch.rand(shape, generator=g) < special_share
    inputs, labels = mask_tokens(ids, special, VOCAB, MASK, torch.Generator().manual_seed(seed))
    return ids, special, inputs, labels


def test_ignore_value_matches_the_objectives():
    assert IGNORE == OBJECTIVE_IGNORE == -100


def test_masking_statistics_15_percent_and_80_10_10():
    ids, special, inputs, labels = _masked()
    selected = labels != IGNORE
    assert not selected[special].any()  # specials are never selected
    share = selected.sum().item() / (~special).sum().item()
    assert share == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[selected], ids[selected])  # labels hold the original ids
    assert torch.equal(inputs[~selected], ids[~selected])  # everything else is untouched
    n = selected.sum().item()
    masked = (inputs[selected] == MASK).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    randomised = 1.0 - masked - kept
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.015)
    assert randomised == pytest.approx(0.1, abs=0.015)
    replaced = inputs[selected][(inputs[selected] != MASK) & (inputs[selected] != ids[selected])]
    assert replaced.min() >= 0 and replaced.max() < VOCAB


def test_masking_is_reproducible_with_a_seeded_generator():
    a, b = _masked(seed=3), _masked(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[2], _masked(seed=4)[2])


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 4),
    cols=st.integers(1, 40),
    prob=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_masking_invariants(rows, cols, prob, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (rows, cols), generator=g)
    special = torch.rand(rows, cols, generator=g) < 0.3
    inputs, labels = mask_tokens(ids, special, 50, MASK, g, prob=prob)
    selected = labels != IGNORE
    assert not (selected & special).any()
    assert torch.equal(inputs[~selected], ids[~selected])
    if prob == 1.0:
        assert torch.equal(selected, ~special)
    if prob == 0.0:
        assert not selected.any()


# --------------------------------------------------------------------------- segments


def test_split_sentences_joins_wrapped_lines_and_splits_at_sentence_ends():
    text = "First sentence is\nwrapped. Second one!\n\nNew paragraph? 你好。世界"
    assert split_sentences(text) == [
        "First sentence is wrapped.",
        "Second one!",
        "New paragraph?",
        "你好。",
        "世界",
    ]


def test_pack_segments_keeps_order_and_size():
    sentences = [[1] * 4, [2] * 3, [3] * 9, [4] * 2, [5] * 1]
    segments = pack_segments(sentences, max_tokens=5)
    assert all(1 <= len(s) <= 5 for s in segments)
    assert np.concatenate(segments).tolist() == sum(sentences, [])
    assert segments[0].tolist() == [1, 1, 1, 1]  # a sentence that would overflow starts anew


# --------------------------------------------------------------------------- NSP pairs

CLS, SEP, PAD = 1, 2, 0
N_DOCS, PER_DOC = 6, 5


def _pairs(batch_size=8, seed=0, **kw) -> NSPPairs:
    # segment s (global index) is the two tokens [10 + s, 10 + s], so a pair names its segments
    docs = [[np.array([10 + d * PER_DOC + j] * 2) for j in range(PER_DOC)] for d in range(N_DOCS)]
    return NSPPairs(
        docs,
        seq_len=16,
        batch_size=batch_size,
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
        mask_id=MASK,
        vocab_size=10 + N_DOCS * PER_DOC,
        seed=seed,
        **kw,
    )


def _segments_of(row: torch.Tensor) -> tuple[int, int]:
    ids = row.tolist()
    assert ids[0] == CLS
    first_sep = ids.index(SEP)
    a, b = ids[1] - 10, ids[first_sep + 1] - 10
    assert ids[first_sep + 3] == SEP
    return a, b


def test_nsp_is_50_50_and_isnext_pairs_are_consecutive():
    data = _pairs(batch_size=50, mlm_prob=0.0)
    labels = []
    for step in range(40):
        batch = data.batch(step)
        for row, label in zip(batch["input_ids"], batch["nsp_labels"].tolist(), strict=True):
            a, b = _segments_of(row)
            assert a % PER_DOC != PER_DOC - 1  # A always has a successor
            if label == IS_NEXT:
                assert b == a + 1
            else:
                assert label == NOT_NEXT and b // PER_DOC != a // PER_DOC  # another document
            labels.append(label)
    assert np.mean(labels) == pytest.approx(0.5, abs=0.04)


def test_pair_layout_types_mask_and_padding():
    batch = _pairs(mlm_prob=0.0).batch(0)
    ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert ids.shape == types.shape == mask.shape == (8, 7)  # [CLS] a a [SEP] b b [SEP]
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert mask.all()
    assert (batch["labels"] == IGNORE).all()  # mlm_prob=0: nothing to predict


def test_batches_are_seekable_and_rank_sliced():
    a, b = _pairs(seed=1), _pairs(seed=1)
    for k, v in a.batch(7, micro=1).items():
        assert torch.equal(v, b.batch(7, micro=1)[k])
    assert not torch.equal(a.batch(7)["input_ids"], a.batch(8)["input_ids"])
    whole = _pairs(batch_size=8, seed=1).batch(3)
    halves = [_pairs(batch_size=4, seed=1).batch(3, rank=r, world=2) for r in range(2)]
    for k, v in whole.items():
        assert torch.equal(torch.cat([h[k] for h in halves]), v)


def test_masking_inside_pairs_spares_cls_sep_and_padding():
    data = _pairs(batch_size=64, mlm_prob=0.5)
    batch = data.batch(0)
    plain = _pairs(batch_size=64, mlm_prob=0.0).batch(0)["input_ids"]
    selected = batch["labels"] != IGNORE
    assert selected.any()
    assert not selected[(plain == CLS) | (plain == SEP) | (plain == PAD)].any()
    assert torch.equal(batch["labels"][selected], plain[selected])


def test_sequential_is_deterministic_and_covers_every_first_segment():
    data = _pairs(batch_size=7)
    runs = [list(data.sequential()) for _ in range(2)]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(*runs, strict=True))
    assert sum(len(b["nsp_labels"]) for b in runs[0]) == N_DOCS * (PER_DOC - 1)
    assert len(list(data.sequential(max_batches=2))) == 2


def test_from_texts_with_a_wordpiece_tokenizer():
    texts = [
        " ".join(f"Document {d} sentence {i} says something." for i in range(30)) for d in range(4)
    ]
    tok = train_tokenizer(texts, vocab_size=200, kind="wordpiece")
    data = NSPPairs.from_texts(tok, texts, seq_len=32, batch_size=4)
    assert max(len(s) for s in data.segments) <= (32 - 3) // 2
    batch = data.batch(0)
    assert batch["input_ids"].shape[1] <= 32
    assert (batch["input_ids"][:, 0] == tok.cls_id).all()


def test_bpe_tokenizer_stands_in_bos_eos_for_cls_sep():
    tok = train_tokenizer(["some text here"] * 5, vocab_size=300, kind="bpe")
    ids = special_ids(tok)
    assert ids["cls_id"] == tok.bos_id and ids["sep_id"] == tok.eos_id


def test_too_little_text_is_one_clear_error():
    with pytest.raises(DataError, match="no document with two or more segments"):
        NSPPairs([[np.array([5, 6])]], 16, 2, cls_id=1, sep_id=2, pad_id=0, mask_id=4, vocab_size=9)
