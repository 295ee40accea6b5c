"""Streaming: deltas never split a UTF-8 character and join to the full text."""

from __future__ import annotations

from gen_helpers import ByteTokenizer, CharTokenizer, ScriptedLM, tiny

from lmforge.generate import GenerationConfig, generate_text, stream


def test_deltas_never_split_a_character():
    text = "héllo 🌍 wörld"
    model = ScriptedLM(list(text.encode()) + [256], prompt_len=2, eos_id=256)
    gen = GenerationConfig(max_new_tokens=40, temperature=0)
    deltas = list(stream(model, ByteTokenizer(), "Hi", gen))
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "🌍" in deltas  # the emoji's 4 byte tokens came out as one delta
    assert model.training  # the stream put the model back in the mode it found it in


def test_stop_string_prefixes_are_held_back():
    text = "a STAR b STOP tail"
    model = ScriptedLM(list(text.encode()), prompt_len=1)
    gen = GenerationConfig(max_new_tokens=40, temperature=0, stop=["STOP"])
    deltas = list(stream(model, ByteTokenizer(), "x", gen))
    assert "".join(deltas) == "a STAR b "
    assert all("STO" not in d for d in deltas)
    assert generate_text(model, ByteTokenizer(), "x", gen) == ["a STAR b "]


def test_stream_equals_generate_text_on_a_real_model():
    model = tiny("gpt-tiny", seed=2)
    tok = CharTokenizer()
    for gen in (
        GenerationConfig(max_new_tokens=15, temperature=0),
        GenerationConfig(max_new_tokens=15, seed=3, stop=["q"]),
    ):
        assert (
            "".join(stream(model, tok, "hello", gen)) == generate_text(model, tok, "hello", gen)[0]
        )
