"""The generation flags `generate` and `chat` share: each changes the output as the Python API
says it should (penalties, beams, stop, min-p, a draft model), chat reads stdin, and bad values
get one sentence naming the flag."""

from __future__ import annotations

import io
import sys

import pytest
from cli_helpers import run_cli
from test_cli_generate_hf import PROMPT, family

from lmforge.generate import GenerationConfig, generate_outputs
from lmforge.generate.engine import encode_prompt
from lmforge.generate.stops import find_stop
from lmforge.interop.hf import import_hf
from lmforge.recipes.chat import EMPTY_STOPPED
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.tokenizer.chat import chat_stops, encode_chat

pytest.importorskip("transformers")
NEW = 20
MESSAGE = "hello"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A converted random Llama (its greedy output repeats tokens) and a GPT-2 whose tokenizer
    differs."""
    root = tmp_path_factory.mktemp("gen_flags")
    _, llama = family("llama", root)
    _, gpt2 = family("gpt2", root)
    return import_hf(llama, root / "lm"), import_hf(gpt2, root / "other")


def api(model_dir, ids, **settings):
    """(new tokens, text) of the Python API for the same settings."""
    model, tok = load_model_and_tokenizer(model_dir)
    gen = GenerationConfig(max_new_tokens=NEW, **settings)
    out = generate_outputs(model, [ids], gen, tok)[0]
    return out.tokens, out.text


def repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


def generate_cli(monkeypatch, capsys, model_dir, *args) -> tuple[str, str]:
    code, out, err = run_cli(
        monkeypatch, capsys, "generate", model_dir, "--prompt", PROMPT,
        "--max-new-tokens", NEW, *args,
    )  # fmt: skip
    assert code == 0, err
    return out.rstrip("\n"), err


def chat_cli(monkeypatch, capsys, model_dir, *args) -> tuple[str, str]:
    """One message through `lmforge chat` on stdin; (the reply, what followed it)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{MESSAGE}\n/exit\n"))
    code, out, err = run_cli(monkeypatch, capsys, "chat", model_dir, "--max-new-tokens", NEW, *args)
    assert code == 0, err
    assert out.count("bot> ") == 1, out
    body = out.split("bot> ", 1)[1].rsplit("\nyou> ", 1)[0]  # the reply, then notes
    reply, _, rest = body.partition("\n(draft acceptance rate")
    return reply, rest and "draft acceptance rate" + rest


@pytest.mark.parametrize(
    "flag",
    [("--repetition-penalty", 5.0), ("--presence-penalty", 2.0), ("--frequency-penalty", 2.0)],
)
def test_a_penalty_removes_the_repeats_of_the_greedy_text(monkeypatch, capsys, dirs, flag):
    lm, _ = dirs
    _, tok = load_model_and_tokenizer(lm)
    ids = encode_prompt(tok, PROMPT)
    greedy, _ = api(lm, ids, temperature=0)
    assert repeats(greedy) >= 3  # the random model loops: something to remove
    name, value = flag
    tokens, text = api(lm, ids, temperature=0, **{name[2:].replace("-", "_"): value})
    assert repeats(tokens) == 0
    out, _ = generate_cli(monkeypatch, capsys, lm, "--temperature", "0", name, str(value))
    assert out == PROMPT + text


def test_chat_reads_stdin_and_takes_every_flag(monkeypatch, capsys, dirs):
    lm, _ = dirs
    _, tok = load_model_and_tokenizer(lm)
    ids = encode_chat(tok, [{"role": "user", "content": MESSAGE}])
    stops = chat_stops(tok)
    greedy_tokens, greedy = api(lm, ids, temperature=0, stop=stops)
    reply, _ = chat_cli(monkeypatch, capsys, lm, "--temperature", "0")
    assert reply == greedy
    assert repeats(greedy_tokens) >= 3

    reply, _ = chat_cli(monkeypatch, capsys, lm, "--temperature", "0", "--repetition-penalty", "5")
    tokens, text = api(lm, ids, temperature=0, repetition_penalty=5.0, stop=stops)
    assert reply == text and repeats(tokens) == 0

    reply, _ = chat_cli(monkeypatch, capsys, lm, "--num-beams", "3", "--length-penalty", "0.5")
    _, beams = api(lm, ids, num_beams=3, length_penalty=0.5)  # beams have no stop strings:
    at = find_stop(beams, stops)  # the best beam is cut before the first one
    assert reply == (beams if at is None else beams[:at])

    cut = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]
    reply, _ = chat_cli(monkeypatch, capsys, lm, "--temperature", "0", "--stop", cut)
    assert reply == greedy[: greedy.index(cut)]

    reply, _ = chat_cli(monkeypatch, capsys, lm, "--temperature", "0", "--stop", greedy[:2])
    assert EMPTY_STOPPED in reply  # the empty reply says the stop string may be why

    reply, _ = chat_cli(
        monkeypatch, capsys, lm, "--temperature", "1", "--min-p", "1", "--seed", "5"
    )
    assert reply == greedy  # min-p 1 keeps only the top token

    reply, rest = chat_cli(monkeypatch, capsys, lm, "--temperature", "0", "--draft", lm)
    assert reply == greedy
    assert "draft acceptance rate: 100.0%" in rest  # the draft is the target itself


def test_generate_draft_acceptance_and_the_python_beams(monkeypatch, capsys, dirs):
    lm, _ = dirs
    model, tok = load_model_and_tokenizer(lm)
    ids = encode_prompt(tok, PROMPT)
    _, greedy = api(lm, ids, temperature=0)
    out, err = generate_cli(monkeypatch, capsys, lm, "--temperature", "0", "--draft", lm,
                            "--draft-k", "2")  # fmt: skip
    assert out == PROMPT + greedy and "draft acceptance rate: 100.0%" in err
    out, err = generate_cli(monkeypatch, capsys, lm, "--temperature", "0", "--stop", greedy[:2])
    assert out == PROMPT and "a --stop string came before any other text" in err  # not "EOS"
    _, beams = api(lm, ids, num_beams=2)
    out, _ = generate_cli(monkeypatch, capsys, lm, "--num-beams", "2")
    assert out == PROMPT + beams
    cut = beams[len(beams) // 2 : len(beams) // 2 + 2]  # the best beam, cut before a stop string
    out, _ = generate_cli(monkeypatch, capsys, lm, "--num-beams", "2", "--stop", cut)
    assert out == PROMPT + beams[: beams.index(cut)]


@pytest.mark.slow
def test_generate_compiled_regional_prints_the_eager_text(monkeypatch, capsys, dirs):
    """--compile (regional by default: one compiled run of blocks for the stack) decodes the
    same greedy text as eager decoding."""
    lm, _ = dirs
    eager, _ = generate_cli(monkeypatch, capsys, lm, "--temperature", "0")
    out, _ = generate_cli(monkeypatch, capsys, lm, "--temperature", "0", "--compile")
    assert out == eager


BAD = [
    (["--repetition-penalty", "nan"], "--repetition-penalty must be a finite number"),
    (["--presence-penalty", "3"], "--presence-penalty must be in [-2, 2]"),
    (["--frequency-penalty", "-inf"], "--frequency-penalty must be a finite number"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    (["--min-p", "1.5"], "--min-p must be in [0, 1]"),
    (["--length-penalty", "inf"], "--length-penalty must be a finite number"),
    (["--num-beams", "0"], "--num-beams must be at least 1"),
    (["--length-penalty", "0.5"], "--length-penalty scores beams only"),
    (["--stop", ""], "every --stop string must be a non-empty string"),
    (["--draft", "{lm}", "--num-beams", "2"], "--draft (speculative decoding) goes with"),
    (["--draft", "{lm}", "--repetition-penalty", "1.2"], "drop --num-beams and the penalties"),
    (["--draft", "{empty}"], "is not a model dir (no config.json)"),
    (["--draft", "{other}"], "has a different tokenizer"),
    (["--compile", "--compile-mode", "fast"], "--compile-mode is 'fast'; use 'whole' or"),
    (["--compile-mode", "regional"], "--compile-mode sets how --compile compiles; add --compile"),
    (["--compile-mode", "whole"], "--compile-mode sets how --compile compiles; add --compile"),
]


@pytest.mark.parametrize("verb", ["generate", "chat"])
@pytest.mark.parametrize(("args", "said"), BAD, ids=[" ".join(a[:2]) for a, _ in BAD])
def test_a_bad_flag_is_one_sentence(monkeypatch, capsys, dirs, tmp_path, verb, args, said):
    lm, other = dirs
    paths = {"lm": str(lm), "other": str(other), "empty": str(tmp_path)}
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n/exit\n"))
    code, out, err = run_cli(monkeypatch, capsys, verb, lm, *(a.format(**paths) for a in args))
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and err.rstrip().endswith("."), err
    assert said in err, err
    assert "bot> " not in out  # refused before the conversation started
