"""Every CLI verb once, and every user error as one sentence with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_helpers import run_cli


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    lines = [
        f"Line {i}: the quick brown fox jumps over the lazy dog. 你好，世界 {i % 7}."
        for i in range(400)
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_presets(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "presets")
    assert code == 0 and "gpt-mini" in out and "llama-mini" in out
    code, out, _ = run_cli(monkeypatch, capsys, "presets", "gpt2")
    assert code == 0 and json.loads(out)["n_layer"] == 12


def test_tokenizer_pretrain_generate_evaluate(monkeypatch, capsys, tmp_path, corpus):
    tok_dir = tmp_path / "tok"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "tokenizer",
        "train",
        "--data",
        str(corpus),
        "--vocab-size",
        "300",
        "--out",
        str(tok_dir),
    )
    assert code == 0, err
    assert (tok_dir / "tokenizer.json").is_file()

    run = tmp_path / "run"
    args = [
        "pretrain",
        "--preset",
        "gpt-tiny",
        "--data",
        str(corpus),
        "--out",
        str(run),
        "--max-steps",
        "6",
        "--tokenizer",
        str(tok_dir),
        "eval_every=3",
        "batch_size=4",
        "seq_len=32",
    ]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "held-out perplexity" in out
    assert (run / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()

    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *args[:-3],
        "--resume",
        "max_steps=8",
        "eval_every=3",
        "batch_size=4",
        "seq_len=32",
    )
    assert code == 0, err

    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        str(run),
        "--prompt",
        "The quick",
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
        "--num-return-sequences",
        "2",
    )
    assert code == 0, err
    assert out.count("The quick") == 2
    code, again, _ = run_cli(
        monkeypatch,
        capsys,
        "generate",
        str(run),
        "--prompt",
        "The quick",
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
        "--num-return-sequences",
        "2",
    )
    assert again == out  # same seed, same text

    code, out, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--data", str(corpus))
    assert code == 0, err
    assert out.startswith("perplexity ")


def _error(monkeypatch, capsys, *args):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code != 0
    assert "Traceback" not in err
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    return line


def test_errors(monkeypatch, capsys, tmp_path, corpus):
    assert "does not exist" in _error(
        monkeypatch,
        capsys,
        "pretrain",
        "--data",
        str(tmp_path / "nope.txt"),
        "--out",
        str(tmp_path / "r"),
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    assert "empty" in _error(
        monkeypatch, capsys, "pretrain", "--data", str(empty), "--out", str(tmp_path / "r")
    )
    assert "unknown preset" in _error(
        monkeypatch, capsys, "pretrain", "--preset", "gpt-huge", "--out", str(tmp_path / "r")
    )
    assert "unknown config key" in _error(
        monkeypatch, capsys, "pretrain", "--out", str(tmp_path / "r"), "n_layerz=2"
    )
    assert "too small" in _error(
        monkeypatch,
        capsys,
        "tokenizer",
        "train",
        "--data",
        str(corpus),
        "--vocab-size",
        "10",
        "--out",
        str(tmp_path / "t"),
    )
    assert "not an lmforge checkpoint" in _error(
        monkeypatch, capsys, "generate", str(tmp_path), "--prompt", "hi"
    )


def test_prompt_longer_than_context(monkeypatch, capsys, tiny_run):
    long_prompt = "word " * 400
    line = _error(monkeypatch, capsys, "generate", str(tiny_run.out_dir), "--prompt", long_prompt)
    assert "context" in line


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "generate", str(tmp_path / "missing"), "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _verbs() -> list[list[str]]:
    """Every command path the CLI registers: ["pretrain"], ["probe", "passkey"], ..."""
    import typer.main

    from lmforge.cli import app

    group = typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        paths += [[name, sub] for sub in subs] if subs else [[name]]
    return paths


def test_every_verb_answers_help(monkeypatch, capsys):
    """Each verb parses and documents itself; the verbs themselves run in their own tests."""
    verbs = _verbs()
    names = {" ".join(v) for v in verbs}
    for expected in ("quickstart", "pretrain", "generate", "evaluate", "finetune", "prompt",
                     "serve", "chat", "convert", "embed", "fill-mask", "extend-context",
                     "probe passkey", "probe ppl-by-length", "data prepare", "tokenizer train"):  # fmt: skip
        assert expected in names, expected
    for verb in verbs:
        code, out, err = run_cli(monkeypatch, capsys, *verb, "--help")
        assert code == 0, (verb, err)
        assert "Usage" in out, verb
