"""`lmforge evaluate` on a causal LM writes its perplexity report (JSON + Markdown) into the
model's run dir, or --out, like the fine-tuned model's evaluation does."""

from __future__ import annotations

import json
import math

import pytest
from cli_helpers import run_cli

from lmforge.config import ModelConfig
from lmforge.evaluate import perplexity
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl_report")
    lines = [f"the fox {i} jumps over the dog and rests" for i in range(40)]
    tok = train_tokenizer(lines, vocab_size=300)
    model = root / "model"
    tok.save(model)
    cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size, max_seq_len=32)
    save_model(Transformer(cfg), model)
    (root / "held.txt").write_text("\n".join(lines[:20]) + "\n")
    (root / "more.txt").write_text("\n".join(lines[20:]) + "\n")
    return model, root / "held.txt", root / "more.txt"


def test_the_perplexity_report_goes_to_the_run_dir_or_out(monkeypatch, capsys, lm, tmp_path):
    model, held, more = lm
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", model, "--data", held)
    assert code == 0, err
    report = json.loads((model / "held-report.json").read_text())
    expected = perplexity(model, [held], progress=False)
    assert math.isclose(report["perplexity"], expected.perplexity, rel_tol=1e-6)
    assert report["tokens"] == expected.tokens and report["data"] == [str(held)]
    assert out.startswith(f"perplexity {expected.perplexity:.3f}")
    md = (model / "held-report.md").read_text()
    assert md.startswith("# model on held.txt") and "| perplexity |" in md
    assert f"report: {model / 'held-report.md'}, {model / 'held-report.json'}" in out
    assert not (held.parent / "held-report.json").exists()  # nothing next to the data

    out_dir = tmp_path / "reports"
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", model, "--data", held, "--data", more, "--out", out_dir
    )
    assert code == 0, err
    both = json.loads((out_dir / "perplexity-report.json").read_text())
    assert both["data"] == [str(held), str(more)] and both["tokens"] > report["tokens"]
    assert (out_dir / "perplexity-report.md").is_file()
