"""Tests for lmforge.tokenizer: training, exact byte-level round trip, save/load, streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.data import default_corpus
from lmforge.errors import DataError, TokenizerError
from lmforge.tokenizer import IncrementalDecoder, Tokenizer, train_tokenizer

CHINESE = [
    "语言模型通过预测下一个词来学习语言的规律。",
    "分词器把文本切分成子词单元，字节级编码可以表示任何字符。",
    "今天天气很好，我们去公园散步吧！🌞🌳",
]
HARD_TEXTS = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\rcarriage returns\n\n\n",
    "whitespace      runs\u00a0\u2003\u3000",
    "中文文本：语言模型！",
    "emoji 🎉🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽",
    "control \x00\x01\x07\x1b[31mred\x1b[0m \x7f end",
    "combining e\u0301 and Å, RTL שלום مرحبا",
    "\ufeffbyte order mark and \u2028 line separator",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 astral plane 𠀋",
]
_settings = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(default_corpus() + CHINESE * 50, vocab_size=2000)


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return train_tokenizer(default_corpus(), vocab_size=1000, kind="wordpiece")


# ----------------------------------------------------------------- byte-level BPE


def test_bpe_layout(bpe: Tokenizer) -> None:
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == len(bpe) == 2000
    roles = (bpe.bos_id, bpe.eos_id, bpe.pad_id, bpe.unk_id, bpe.mask_id)
    assert roles == (0, 1, 2, 3, 4)
    assert bpe.cls_id is None and bpe.sep_id is None
    assert bpe.special_ids == frozenset(range(5))
    vocab = bpe.backend.get_vocab()
    assert all(ch in vocab for ch in pre_tokenizers.ByteLevel.alphabet())


@given(st.text())
@_settings
def test_bpe_round_trip_is_exact(bpe: Tokenizer, text: str) -> None:
    assume("<|" not in text)  # special-token strings in text become special ids
    assert bpe.decode(bpe.encode(text)) == text


@pytest.mark.parametrize("text", HARD_TEXTS + CHINESE)
def test_bpe_round_trip_hard_cases(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.decode(ids, skip_special_tokens=False) == text


def test_bpe_learns_chinese_merges(bpe: Tokenizer) -> None:
    text = CHINESE[0]
    assert len(bpe.encode(text)) < len(text.encode("utf-8"))


def test_smallest_bpe_vocab_still_round_trips() -> None:
    tok = train_tokenizer(["just a little text"], vocab_size=261)
    assert tok.vocab_size == 261
    assert tok.decode(tok.encode("any 文字 🎉")) == "any 文字 🎉"


def test_encode_batch_matches_encode(bpe: Tokenizer) -> None:
    texts = HARD_TEXTS + CHINESE
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]
    assert bpe.encode_batch(iter(texts), add_special_tokens=True)[1][0] == bpe.bos_id


def test_bpe_special_tokens(bpe: Tokenizer) -> None:
    assert bpe.encode("hi", add_special_tokens=True) == [bpe.bos_id, *bpe.encode("hi")]
    ids = bpe.encode("a<|eos|>b")
    assert bpe.eos_id in ids
    assert bpe.decode(ids) == "ab"
    assert bpe.decode(ids, skip_special_tokens=False) == "a<|eos|>b"
    pair = bpe.encode_pair("a", "b")
    assert pair.ids == [bpe.bos_id, *bpe.encode("a"), bpe.eos_id, *bpe.encode("b"), bpe.eos_id]
    assert pair.token_type_ids == [0, 0, 0, 1, 1]


def test_decode_rejects_ids_outside_vocab(bpe: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="token id 2000 is outside the vocabulary"):
        bpe.decode([5, 2000])
    with pytest.raises(TokenizerError, match="token id -1"):
        bpe.decode([-1])


# ----------------------------------------------------------------- training errors


def test_vocab_too_small() -> None:
    msg = (
        "vocab size 100 is too small: byte-level BPE needs at least 261 (256 bytes + 5 special "
        "tokens); pass --vocab-size 261 or more."
    )
    with pytest.raises(TokenizerError) as info:
        train_tokenizer(["some text"], vocab_size=100)
    assert str(info.value) == msg
    with pytest.raises(TokenizerError, match="WordPiece needs at least 6"):
        train_tokenizer(["some text"], vocab_size=3, kind="wordpiece")
    with pytest.raises(TokenizerError, match="not a whole number"):
        train_tokenizer(["some text"], vocab_size="big")  # type: ignore[arg-type]


@pytest.mark.parametrize("texts", [[], ["", "  \n\t"], iter([])])
def test_empty_training_texts(texts: list[str]) -> None:
    with pytest.raises(DataError, match="training texts are empty"):
        train_tokenizer(texts, vocab_size=300)


def test_bad_training_inputs() -> None:
    with pytest.raises(DataError, match="training text 1 is a int"):
        train_tokenizer(["ok", 3], vocab_size=300)  # type: ignore[list-item]
    with pytest.raises(DataError, match="single string"):
        train_tokenizer("a whole corpus in one string", vocab_size=300)
    with pytest.raises(TokenizerError, match=r"did you mean 'bpe'\?"):
        train_tokenizer(["x"], vocab_size=300, kind="bep")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="min frequency -1"):
        train_tokenizer(["x"], vocab_size=300, min_frequency=-1)


# ----------------------------------------------------------------- WordPiece


def test_wordpiece_layout_and_pairs(wordpiece: Tokenizer) -> None:
    assert wordpiece.kind == "wordpiece"
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id) == (0, 1, 2)
    assert (wordpiece.sep_id, wordpiece.mask_id, wordpiece.bos_id) == (3, 4, None)
    a, b = wordpiece.encode("The function returns"), wordpiece.encode("a new object.")
    pair = wordpiece.encode_pair("The function returns", "a new object.")
    cls, sep = wordpiece.cls_id, wordpiece.sep_id
    assert pair.ids == [cls, *a, sep, *b, sep]
    assert pair.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert wordpiece.encode("x y", add_special_tokens=True)[::2] == [cls, wordpiece.encode("y")[0]]


def test_wordpiece_round_trip_is_close(wordpiece: Tokenizer) -> None:
    text = "Return the value of the attribute, if it exists."
    assert wordpiece.decode(wordpiece.encode(text)) == text
    assert wordpiece.unk_id in wordpiece.encode("🦜")  # unseen characters become [UNK]


# ----------------------------------------------------------------- save / load


def test_save_load_round_trip(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    bpe.model_max_length = 512
    try:
        out = bpe.save(tmp_path / "tok")
    finally:
        bpe.chat_template, bpe.model_max_length = None, None
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["lmforge_kind"] == "bpe" and config["eos_token"] == "<|eos|>"
    loaded = Tokenizer.load(out)
    texts = HARD_TEXTS + CHINESE
    assert loaded.encode_batch(texts) == bpe.encode_batch(texts)
    assert loaded.roles == bpe.roles and loaded.kind == "bpe"
    assert loaded.model_max_length == 512 and loaded.chat_template == config["chat_template"]
    assert Tokenizer.from_hf_dir(out / "tokenizer.json").vocab_size == bpe.vocab_size


def test_load_wordpiece_round_trip(wordpiece: Tokenizer, tmp_path: Path) -> None:
    loaded = Tokenizer.load(wordpiece.save(tmp_path))
    assert loaded.encode_pair("a b", "c d") == wordpiece.encode_pair("a b", "c d")
    assert loaded.roles == wordpiece.roles


def test_load_without_config_infers_roles(tmp_path: Path) -> None:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"])
    backend.train_from_iterator(["gpt style text"], trainer=trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    assert tok.kind == "bpe"
    assert tok.bos_id == tok.eos_id == 0 and tok.pad_id == 1 and tok.mask_id is None


def test_load_bert_dir_without_config(wordpiece: Tokenizer, tmp_path: Path) -> None:
    wordpiece.save(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    assert Tokenizer.load(tmp_path).roles == wordpiece.roles


def test_load_hf_config_with_added_token_dicts(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    config = {
        "eos_token": {"content": "<|eos|>", "lstrip": False, "special": True},
        "pad_token": None,
        "model_max_length": 1000000000000000019884624838656,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.load(tmp_path)
    assert tok.roles == {"eos": "<|eos|>"} and tok.model_max_length is None


def test_load_errors(bpe: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope")
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(tmp_path)
    assert str(tmp_path) in str(info.value) and "lmforge tokenizer train" in str(info.value)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="is not a valid tokenizer file"):
        Tokenizer.load(tmp_path)
    bpe.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"pad_token": "<nope>"}')
    with pytest.raises(
        TokenizerError, match="pad token '<nope>' named in .* is not in the vocabulary"
    ):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerError, match="is not valid JSON"):
        Tokenizer.load(tmp_path)


def test_saved_dir_loads_in_transformers(bpe: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    bpe.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    text = "Hello 世界 🎉  spaces\n"
    assert hf.encode(text, add_special_tokens=False) == bpe.encode(text)
    assert hf.encode(text) == bpe.encode(text, add_special_tokens=True)
    assert hf.decode(bpe.encode(text)) == text
    assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (1, 2, 4)


# ----------------------------------------------------------------- streaming


def _stream(tok: Tokenizer, ids: list[int], **kwargs: object) -> list[str]:
    dec = IncrementalDecoder(tok, **kwargs)  # type: ignore[arg-type]
    deltas = [dec.step(i) for i in ids]
    deltas.append(dec.finish())
    assert dec.text == "".join(deltas)
    return deltas


def test_incremental_decoder_never_splits_characters(bpe: Tokenizer) -> None:
    text = "模型🚀生成文本👨‍👩‍👧‍👦，逐个输出😀 done"
    ids = bpe.encode(text)
    pieces = [bpe.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "test needs tokens that split characters"
    deltas = _stream(bpe, ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas[:-1]  # something was held back mid-character


@given(st.text())
@_settings
def test_incremental_decoder_property(bpe: Tokenizer, text: str) -> None:
    assume("\ufffd" not in text and "<|" not in text)
    deltas = _stream(bpe, bpe.encode(text))
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_incremental_decoder_with_prompt_and_specials(bpe: Tokenizer) -> None:
    prompt = bpe.encode("提示：")
    reply = bpe.encode("回答🎉") + [bpe.eos_id]
    dec = IncrementalDecoder(bpe, prompt_ids=prompt)
    text = "".join(dec.step(i) for i in reply) + dec.finish()
    assert text == "回答🎉"
    kept = _stream(bpe, reply, skip_special_tokens=False)
    assert "".join(kept) == "回答🎉<|eos|>"


def test_incremental_decoder_flushes_incomplete_tail(bpe: Tokenizer) -> None:
    ids = bpe.encode("🎉")
    assert len(ids) > 1, "test needs an emoji split over several tokens"
    dec = IncrementalDecoder(bpe)
    assert [dec.step(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.finish() == "\ufffd" == dec.text
    assert dec.finish() == ""


def test_incremental_decoder_wordpiece_spacing(wordpiece: Tokenizer) -> None:
    ids = wordpiece.encode("The interpreter evaluates expressions, then statements.")
    assert "".join(_stream(wordpiece, ids)) == wordpiece.decode(ids)


def test_bad_text_gets_a_clear_error(bpe: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="lone surrogate U\\+D800 at position 1"):
        bpe.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="text 1 is a int, not a string"):
        bpe.encode_batch(["ok", 5])  # type: ignore[list-item]
    with pytest.raises(TokenizerError, match="text 1 holds the lone surrogate U\\+DC80"):
        bpe.encode_pair("ok", "\udc80")
    with pytest.raises(DataError, match="lone surrogate U\\+DC80"):
        train_tokenizer(["fine", "x\udc80"], vocab_size=300)
