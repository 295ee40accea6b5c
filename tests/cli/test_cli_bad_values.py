"""Every verb, bad values: wrong types, out-of-range and non-finite numbers, missing paths, wrong
file kinds, devices that do not exist, configs that are not UTF-8. Each must end with a non-zero
exit and one sentence; never a traceback, never an unexpected-failure line, never a silent exit 0.
"""

from __future__ import annotations

import pytest
from cli_helpers import run_cli

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer

M, T, FILE, DIR, LATIN1, OUT, GGUF_TEXT, JSONL = (
    "{model}",
    "{tok}",
    "{file}",
    "{dir}",
    "{latin1}",
    "{out}",
    "{gguf_text}",
    "{jsonl}",
)
NOPE = "/nonexistent/lmforge/path"

CASES: list[tuple[str, list[str]]] = [
    # generate
    ("type", ["generate", M, "--max-new-tokens", "abc"]),
    ("nan", ["generate", M, "--temperature", "nan"]),
    ("inf", ["generate", M, "--temperature", "inf"]),
    ("nan", ["generate", M, "--top-p", "nan"]),
    ("range", ["generate", M, "--temperature", "-1"]),
    ("range", ["generate", M, "--top-p", "2"]),
    ("range", ["generate", M, "--top-k", "0"]),
    ("range", ["generate", M, "--max-new-tokens", "0"]),
    ("range", ["generate", M, "--num-return-sequences", "0"]),
    ("missing", ["generate", NOPE]),
    ("kind", ["generate", FILE]),
    ("kind", ["generate", DIR]),
    # chat
    ("nan", ["chat", M, "--temperature", "nan"]),
    ("nan", ["chat", M, "--top-p", "-inf"]),
    ("missing", ["chat", NOPE]),
    # serve (each must fail before the server starts)
    ("type", ["serve", M, "--port", "abc"]),
    ("nan", ["serve", M, "--kv-memory-gb", "nan"]),
    ("range", ["serve", M, "--max-tokens", "0"]),
    ("range", ["serve", M, "--max-batch", "0"]),
    ("key", ["serve", M, "--api-key", ""]),
    ("key", ["serve", M, "--api-key", "  "]),
    ("device", ["serve", M, "--device", "banana"]),
    ("device", ["serve", M, "--device", "cuda:99"]),
    ("device", ["serve", M, "--dtype", "float8"]),
    ("missing", ["serve", NOPE]),
    ("kind", ["serve", FILE]),
    ("missing", ["serve", M, "--draft", NOPE]),
    ("kind", ["serve", M, "--draft", FILE]),
    ("draft", ["serve", M, "--draft", DIR]),
    ("range", ["serve", M, "--draft", M, "--draft-k", "0"]),
    ("compile", ["serve", M, "--compile-mode", "whole"]),
    ("compile", ["serve", M, "--compile", "--compile-mode", "fast"]),
    # evaluate
    ("missing", ["evaluate", NOPE, "--data", FILE]),
    ("missing", ["evaluate", M, "--data", NOPE]),
    ("range", ["evaluate", M, "--data", FILE, "--batch-size", "0"]),
    ("kind", ["evaluate", M, "--data", LATIN1]),
    # pretrain
    ("nan", ["pretrain", "--out", OUT, "lr=nan"]),
    ("adamw", ["pretrain", "--out", OUT, "lr=-1"]),
    ("adamw", ["pretrain", "--out", OUT, "beta1=1.5"]),
    ("adamw", ["pretrain", "--out", OUT, "eps=-1e-8"]),
    ("size", ["pretrain", "--out", OUT, "n_layer=1000000000"]),
    ("size", ["pretrain", "--out", OUT, "model.d_model=100000000"]),
    ("nan", ["pretrain", "--out", OUT, "model.norm_eps=nan"]),
    ("device", ["pretrain", "--out", OUT, "device=banana"]),
    ("device", ["pretrain", "--out", OUT, "device=cuda:99"]),
    ("config", ["pretrain", "--out", OUT, "--config", LATIN1]),
    ("config", ["pretrain", "--out", OUT, "--config", NOPE]),
    ("config", ["pretrain", "--out", OUT, "--config", DIR]),
    ("missing", ["pretrain", "--out", OUT, "--data", NOPE]),
    ("missing", ["pretrain", "--out", OUT, "--tokenizer", NOPE]),
    ("missing", ["pretrain", "--out", OUT, "--init", NOPE]),
    ("type", ["pretrain", "--out", OUT, "--max-steps", "x"]),
    # tokenizer train
    ("range", ["tokenizer", "train", "--out", OUT, "--vocab-size", "1000000000"]),
    ("range", ["tokenizer", "train", "--out", OUT, "--vocab-size", "-5"]),
    ("type", ["tokenizer", "train", "--out", OUT, "--vocab-size", "1e3"]),
    ("kind", ["tokenizer", "train", "--out", FILE, "--vocab-size", "300", "--data", FILE]),
    ("missing", ["tokenizer", "train", "--out", OUT, "--data", NOPE]),
    # data prepare
    (
        "nan",
        [
            "data",
            "prepare",
            "--data",
            FILE,
            "--tokenizer",
            T,
            "--out",
            OUT,
            "--valid-fraction",
            "nan",
        ],
    ),  # fmt: skip
    (
        "range",
        [
            "data",
            "prepare",
            "--data",
            FILE,
            "--tokenizer",
            T,
            "--out",
            OUT,
            "--valid-fraction",
            "2",
        ],
    ),  # fmt: skip
    ("missing", ["data", "prepare", "--data", NOPE, "--tokenizer", T, "--out", OUT]),
    ("missing", ["data", "prepare", "--data", FILE, "--tokenizer", NOPE, "--out", OUT]),
    # convert
    ("missing", ["convert", "--from-gguf", NOPE, "--out", OUT]),
    ("kind", ["convert", "--from-gguf", GGUF_TEXT, "--out", OUT]),
    ("kind", ["convert", "--from-gguf", DIR, "--out", OUT]),
    ("missing", ["convert", "--from-hf", NOPE, "--out", OUT]),
    ("missing", ["convert", "--to-hf", NOPE, "--out", OUT]),
    # extend-context, probe, embed, fill-mask, prompt, finetune
    ("nan", ["extend-context", M, "--out", OUT, "--factor", "nan"]),
    ("range", ["extend-context", M, "--out", OUT, "--factor", "-2"]),
    ("missing", ["extend-context", NOPE, "--out", OUT]),
    ("range", ["probe", "passkey", M, "--trials", "0"]),
    ("type", ["probe", "passkey", M, "--lengths", "abc"]),
    ("missing", ["probe", "ppl-by-length", NOPE]),
    ("missing", ["embed", NOPE, "--text", "hi"]),
    ("range", ["embed", M, "--text", "hi", "--batch-size", "0"]),
    ("missing", ["fill-mask", NOPE, "hi"]),
    (
        "device",
        [
            "prompt",
            M,
            "--template",
            "{{text}}",
            "--verbalizer",
            "a=x",
            "--data",
            JSONL,
            "--device",
            "banana",
        ],
    ),  # fmt: skip
    ("missing", ["prompt", M, "--template", "{{text}}", "--verbalizer", "a=x", "--data", NOPE]),
    (
        "nan",
        [
            "finetune",
            M,
            "--task",
            "classify",
            "--train",
            JSONL,
            "--out",
            OUT,
            "--lora-dropout",
            "nan",
        ],
    ),  # fmt: skip
    (
        "nan",
        ["finetune", M, "--task", "classify", "--train", JSONL, "--out", OUT, "--epochs", "inf"],
    ),  # fmt: skip
    ("missing", ["finetune", M, "--task", "classify", "--train", NOPE, "--out", OUT]),
    ("missing", ["finetune", NOPE, "--task", "classify", "--train", JSONL, "--out", OUT]),
    ("presets", ["presets", "no-such-preset"]),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli_bad")
    tok = train_tokenizer([f"the fox {i} jumps over the dog" for i in range(50)], vocab_size=300)
    model = d / "model"
    tok.save(model)
    tok.save(d / "tok")
    cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size, max_seq_len=64)
    save_model(Transformer(cfg), model)
    (d / "text.txt").write_text("the fox jumps over the dog\n" * 20)
    (d / "latin1.yaml").write_bytes("lr: 0.1 # caf\xe9\n".encode("latin-1"))
    (d / "fake.gguf").write_text("this is text, not a GGUF file")
    (d / "rows.jsonl").write_text('{"text": "the fox", "label": "a"}\n' * 4)
    (d / "empty_dir").mkdir()
    return {
        "model": str(model),
        "tok": str(d / "tok"),
        "file": str(d / "text.txt"),
        "dir": str(d / "empty_dir"),
        "latin1": str(d / "latin1.yaml"),
        "out": str(d / "out"),
        "gguf_text": str(d / "fake.gguf"),
        "jsonl": str(d / "rows.jsonl"),
    }


@pytest.mark.parametrize(("what", "args"), CASES, ids=[f"{w}-{' '.join(a[:2])}" for w, a in CASES])
def test_bad_value_is_one_sentence_and_a_non_zero_exit(monkeypatch, capsys, paths, what, args):
    import uvicorn

    def no_serving(*_, **__):
        raise AssertionError("the server started; the bad value was not refused")

    monkeypatch.setattr(uvicorn.Server, "run", no_serving)
    monkeypatch.setenv("LMFORGE_API_KEY", "")
    monkeypatch.delenv("LMFORGE_API_KEY")
    argv = [a.format(**paths) for a in args]
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    said = (out + err).strip()
    assert code != 0, (argv, said)
    assert said, argv
    assert "Traceback" not in said and "failed unexpectedly" not in said, said
    if said.startswith("error:"):
        assert said.count("\n") == 0, said  # one line
        assert said.endswith((".", "?", ")")), said


@pytest.mark.parametrize("key", ["", " ", "a b"])
def test_an_empty_api_key_variable_is_refused(monkeypatch, capsys, paths, key):
    monkeypatch.setenv("LMFORGE_API_KEY", key)
    code, out, err = run_cli(monkeypatch, capsys, "serve", paths["model"])
    assert code == 2 and "API key is empty or contains whitespace" in err, (out, err)
