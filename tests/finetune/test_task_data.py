"""Reading, checking and encoding labelled files; seekable task batches."""

from __future__ import annotations

import pytest
from ft_helpers import classify_rows, tagged_rows, write_csv, write_jsonl

from lmforge.data.task_batches import (
    TaskBatches,
    TruncationWarning,
    encode,
    encode_classify,
    encode_sft,
    encode_tokens,
    pad_features,
)
from lmforge.data.tasks import check_labels, label_names, read_task_file, record_labels
from lmforge.errors import DataError
from lmforge.objectives import IGNORE
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def wordpiece(bases):
    return Tokenizer.load(bases["bert"])


@pytest.fixture(scope="module")
def bpe(bases):
    return Tokenizer.load(bases["gpt"])


def test_csv_and_jsonl_records(tmp_path):
    rows = classify_rows(4)
    for path in (write_csv(tmp_path / "a.csv", rows), write_jsonl(tmp_path / "a.jsonl", rows)):
        records = read_task_file(path, "classify")
        assert [r["label"] for r in records] == ["pos", "neg", "pos", "neg"]
        assert records[0]["text_pair"] is None
    tags = tagged_rows(3)
    records = read_task_file(write_csv(tmp_path / "t.csv", tags), "tokens")
    assert records[0] == {"tokens": tags[0]["tokens"], "tags": tags[0]["tags"]}
    write_jsonl(tmp_path / "n.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": 10}])
    assert label_names(
        record_labels(read_task_file(tmp_path / "n.jsonl", "classify"), "classify")
    ) == ["1", "10"]
    assert label_names(["I-X", "O", "B-X"], tags=True) == ["O", "B-X", "I-X"]


def test_missing_column_names_the_columns_found(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [{"sentence": "hi", "lbl": "pos"}])
    with pytest.raises(DataError, match=r"no 'text' column \(columns found: 'sentence', 'lbl'\)"):
        read_task_file(path, "classify")
    path = write_jsonl(tmp_path / "bad.jsonl", [{"source": "a"}])
    with pytest.raises(DataError, match="no 'target' column.*'source'"):
        read_task_file(path, "seq2seq")


def test_empty_file_and_bad_values(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no examples"):
        read_task_file(tmp_path / "empty.csv", "classify")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no examples"):
        read_task_file(tmp_path / "empty.jsonl", "tokens")
    write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match="2 tokens but 1 tags"):
        read_task_file(tmp_path / "t.jsonl", "tokens")
    write_csv(tmp_path / "l.csv", [{"text": "a", "label": ""}])
    with pytest.raises(DataError, match="empty 'label'"):
        read_task_file(tmp_path / "l.csv", "classify")
    with pytest.raises(DataError, match="does not exist"):
        read_task_file(tmp_path / "nope.csv", "classify")


def test_unknown_label_is_refused():
    with pytest.raises(
        DataError, match="label 'meh' \\(2 time\\(s\\)\\) that the training file never had"
    ):
        check_labels(["pos", "meh", "meh"], ["neg", "pos"], "validation", "v.csv")


def test_classify_encoding_marks_and_truncation(wordpiece, bpe):
    records = [{"text": "good film", "text_pair": "bad plot", "label": "pos"}]
    [f], cut = encode_classify(wordpiece, records, {"pos": 1}, 64)
    assert cut == 0 and f["labels"] == 1
    assert f["input_ids"] == wordpiece.encode_pair("good film", "bad plot").ids
    assert f["token_type_ids"] == wordpiece.encode_pair("good film", "bad plot").token_type_ids
    [f], _ = encode_classify(
        bpe, [{"text": "good film", "text_pair": None, "label": "x"}], {"x": 0}, 64
    )
    assert f["input_ids"] == [bpe.bos_id, *bpe.encode("good film"), bpe.eos_id]
    long = [{"text": " ".join(["story"] * 30), "text_pair": None, "label": "x"}] * 3
    with pytest.warns(
        TruncationWarning, match="^3 of 4 training examples were longer than 8 tokens"
    ):
        features = encode(
            "classify", wordpiece, [*long, records[0]], {"x": 0, "pos": 1}, 8, "training"
        )
    assert all(len(f["input_ids"]) <= 8 for f in features)
    assert (
        features[0]["input_ids"][0] == wordpiece.cls_id
        and features[0]["input_ids"][-1] == wordpiece.sep_id
    )


def test_tokens_label_the_first_piece_of_each_word(wordpiece):
    records = [{"tokens": ["alice", "unfathomable", "rome"], "tags": ["B-PER", "O", "B-LOC"]}]
    ids = {"O": 0, "B-PER": 1, "B-LOC": 2}
    [f], cut = encode_tokens(wordpiece, records, ids, 64)
    pieces = [wordpiece.encode(w) for w in records[0]["tokens"]]
    assert len(pieces[1]) > 1  # a word the tiny vocabulary splits
    expected = [IGNORE]
    for piece, tag in zip(pieces, records[0]["tags"], strict=True):
        expected += [ids[tag]] + [IGNORE] * (len(piece) - 1)
    assert f["labels"] == expected + [IGNORE] and cut == 0
    [f], cut = encode_tokens(wordpiece, records, ids, 4)  # [CLS] alice un.. [SEP]
    assert cut == 1 and sum(t != IGNORE for t in f["labels"]) == 2


def test_sft_loss_only_on_the_response(bpe):
    records = [{"prompt": "repeat good:", "response": " good good"}]
    [f], _ = encode_sft(bpe, records, 64)
    prompt = [bpe.bos_id, *bpe.encode("repeat good:")]
    response = [*bpe.encode(" good good"), bpe.eos_id]
    assert f["input_ids"] == (prompt + response)[:-1]
    assert f["labels"] == [IGNORE] * (len(prompt) - 1) + response


def test_sft_chat_trains_every_assistant_turn(bpe):
    from lmforge.tokenizer import render_chat

    messages = [
        {"role": "user", "content": "say good"},
        {"role": "assistant", "content": "good!"},
        {"role": "user", "content": "say bad"},
        {"role": "assistant", "content": "bad!"},
    ]
    [f], _ = encode_sft(bpe, [{"messages": messages}], 128)
    ids = [*f["input_ids"], f["labels"][-1]]
    trained = [label for label in f["labels"] if label != IGNORE]
    assert trained == bpe.encode("good!") + bpe.encode("bad!") + [bpe.eos_id]
    # the untrained context is the chat template's rendering before each reply
    assert bpe.decode(ids, skip_special_tokens=False).startswith(
        render_chat(bpe, messages[:1], add_generation_prompt=True)
    )


def test_batches_seek_and_cover_each_epoch(wordpiece):
    records = [{"text": f"w{i}", "text_pair": None, "label": "a"} for i in range(10)]
    features, _ = encode_classify(wordpiece, records, {"a": 0}, 16)
    for i, f in enumerate(features):
        f["labels"] = i  # remember which example this is

    def data():
        return TaskBatches(features, lambda fs: pad_features(fs, 0), 4, grad_accum=2, seed=3)

    d = data()
    seen = [
        int(x) for step in range(5) for micro in range(2) for x in d.batch(step, micro)["labels"]
    ]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # each epoch has its own order
    assert (
        data().batch(3, 1)["labels"].tolist() == d.batch(3, 1)["labels"].tolist()
    )  # a resume seeks
    # two ranks together see what one process sees with twice the batch
    one = TaskBatches(features, lambda fs: pad_features(fs, 0), 8, seed=3)
    two = TaskBatches(features, lambda fs: pad_features(fs, 0), 4, seed=3)
    both = [*two.batch(2, 0, 0, 2)["labels"].tolist(), *two.batch(2, 0, 1, 2)["labels"].tolist()]
    assert both == one.batch(2)["labels"].tolist()
    b = d.batch(0)
    assert b["attention_mask"].sum(1).tolist() == [
        (b["input_ids"][i] != 0).sum().item() for i in range(4)
    ]
