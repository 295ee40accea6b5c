"""What a user sees: train keys in --help and the docs, progress bars on long verbs, a note
instead of an empty output, the report card at the end of a run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cli_helpers import run_cli

import lmforge.recipes.generate as generate_recipe
from lmforge.config.train import TrainConfig, train_keys, train_keys_markdown
from lmforge.generate.core import GenerationOutput, GenerationStats
from lmforge.recipes.generate import explain_empty
from lmforge.tokenizer import Tokenizer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "train-keys.md"


def test_every_train_key_has_a_default_and_meaning_in_help(monkeypatch, capsys):
    keys = train_keys()
    assert [k for k, _, _ in keys] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert all(meaning for _, _, meaning in keys), [k for k, _, m in keys if not m]
    assert dict((k, d) for k, d, _ in keys)["lr"] == "0.001"
    for verb in ("pretrain", "finetune"):
        code, out, err = run_cli(monkeypatch, capsys, verb, "--help")
        assert code == 0, err
        for key, default, _ in keys:
            assert f"{key} = {default}:" in out, (verb, key)
    assert DOCS.read_text(encoding="utf-8") == train_keys_markdown(), (
        "docs/train-keys.md is stale; rewrite it with lmforge.config.train.train_keys_markdown()"
    )


def test_run_ends_with_a_report_card(tiny_run):
    page = (tiny_run.out_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2>Curves</h2>" in page and "best_eval_ppl" in page
    assert json.loads((tiny_run.out_dir / "hardware.json").read_text())["cpu_count"] >= 1


def test_evaluate_shows_progress(monkeypatch, capsys, tiny_run, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", tiny_run.out_dir, "--data", text)
    assert code == 0, err
    assert out.startswith("perplexity ")
    assert "perplexity:" in err and "batch" in err  # the tqdm bar on stderr


def test_prompt_shows_progress(monkeypatch, capsys, tiny_run, tmp_path):
    data = tmp_path / "reviews.jsonl"
    rows = [{"text": f"review {i} was fine", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    code, out, err = run_cli(
        monkeypatch, capsys, "prompt", tiny_run.out_dir, "--template", "{text}. It was [MASK].",
        "--verbalizer", "pos=good", "--verbalizer", "neg=bad", "--data", data,
        "--out", tmp_path / "p",
    )  # fmt: skip
    assert code == 0, err
    assert "accuracy" in out and "scoring prompts:" in err


def test_an_empty_output_says_why(monkeypatch, capsys, tiny_run):
    class EndsAtOnce:  # EOS came first
        def __init__(self, model, prompts, gen, tok, compile):
            self.outputs = [GenerationOutput(tokens=[], text="", finish_reason="stop")]
            self.stats = GenerationStats(len(prompts[0]), 0)

        def steps(self):
            return iter(())

    monkeypatch.setattr(generate_recipe, "SamplingRun", EndsAtOnce)
    code, out, err = run_cli(
        monkeypatch, capsys, "generate", tiny_run.out_dir, "--prompt", "Hi", "--temperature", "0"
    )
    assert code == 0, err
    assert out == "Hi\n"
    assert err.startswith("note: the model ended at once (its first token was end-of-sequence).")
    assert err.count("\n") == 1


def test_explain_empty(tiny_run):
    tok = Tokenizer.load(tiny_run.out_dir)
    space = tok.encode(" ")
    assert explain_empty(tok, tok.encode("a fox"), 8) is None
    assert "only 1 whitespace token(s)" in explain_empty(tok, space[:1], 8)
    assert "all 4 new tokens" in explain_empty(tok, space[:1] * 4, 4)
    tok.chat_template = "{{ messages }}"
    assert "lmforge chat" in explain_empty(tok, [], 8)
