"""`lmforge inspect ...` end to end on model dirs with real tokenizers, the saliency section of
`lmforge evaluate`'s report, and clear one-line errors for bad input."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.recipes.finetuned import write_task_info
from lmforge.tokenizer import Tokenizer, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_cli  # noqa: E402

WORDS = "the film was a good bad great awful plot story and very it acting of this".split()


def corpus() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]


def model_dir(root: Path, name: str, preset: str, kind: str, **cfg) -> Path:
    tok = train_tokenizer(corpus(), vocab_size=400 if kind == "bpe" else 120, kind=kind)
    config = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                     dropout=0.0, attn_dropout=0.0, **cfg)  # fmt: skip
    torch.manual_seed(0)
    out = root / name
    save_model(Transformer(config), out)
    tok.save(out)
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect_cli")
    gpt = model_dir(root, "gpt", "gpt-tiny", "bpe")
    clf = model_dir(root, "clf", "bert-tiny", "wordpiece", heads=["classify"], num_labels=2)
    write_task_info(clf, {"task": "classify", "labels": ["neg", "pos"], "method": "full",
                          "max_len": 32, "base_model": "random"})  # fmt: skip
    mlm = model_dir(root, "mlm", "bert-tiny", "wordpiece")
    data = root / "test.jsonl"
    rng = random.Random(1)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(6)), "label": rng.choice(["neg", "pos"])}
            for _ in range(20)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"gpt": gpt, "clf": clf, "mlm": mlm, "data": data, "root": root}


@pytest.mark.slow
def test_each_verb_writes_its_files(monkeypatch, capsys, dirs, tmp_path):
    cases = [
        ("attention", dirs["gpt"], ["--text", "the film was good", "--heads", "0,1"]),
        ("lens", dirs["gpt"], ["--text", "the film was good"]),
        ("patch", dirs["gpt"], ["--text", "the film was good", "--corrupted", "the film was bad",
                                "--answer", " plot", "--wrong", " story"]),
        ("attention", dirs["clf"], ["--text", "a good film", "--layers", "-1"]),
        ("lens", dirs["clf"], ["--text", "a good film"]),
        ("patch", dirs["clf"], ["--text", "a good film", "--corrupted", "a bad film",
                                "--answer", "pos", "--wrong", "neg"]),
        ("saliency", dirs["clf"], ["--text", "a good film", "--text", "an awful plot", "--steps", "16"]),
        ("saliency", dirs["mlm"], ["--text", "a good film", "--template", "{text} it was [MASK].",
                                   "--verbalizer", "pos=good", "--verbalizer", "neg=bad",
                                   "--steps", "16"]),
        ("saliency", dirs["gpt"], ["--text", "a good film", "--template", "{text} it was",
                                   "--verbalizer", "pos=good", "--verbalizer", "neg=bad",
                                   "--steps", "16"]),
    ]  # fmt: skip
    for n, (verb, model, args) in enumerate(cases):
        out = tmp_path / f"{n}-{verb}"
        code, stdout, stderr = run_cli(
            monkeypatch, capsys, "inspect", verb, model, *args, "--out", out
        )
        assert code == 0, (verb, model, stderr)
        stem = "saliency" if verb == "saliency" else verb
        for suffix in (".html", ".png", ".json"):
            assert (out / f"{stem}{suffix}").is_file(), (verb, suffix)
            assert f"wrote {out / (stem + suffix)}" in stdout
    lens = json.loads((tmp_path / "4-lens" / "lens.json").read_text())
    assert lens["classes"] == ["neg", "pos"] and len(lens["class_probs"]) == 3
    sal = json.loads((tmp_path / "6-saliency" / "saliency.json").read_text())
    tok = Tokenizer.load(dirs["clf"])
    want = [len(tok.encode(t, add_special_tokens=True)) for t in ("a good film", "an awful plot")]
    assert [len(e["scores"]) for e in sal["examples"]] == want  # [CLS] ... [SEP] included


@pytest.mark.parametrize(
    "verb, extra, message",
    [
        ("attention", ["--text", "the film", "--heads", "9"], "head 9 does not exist"),
        ("attention", ["--text", "the film", "--layers", "x"], "not a list of numbers"),
        ("attention", ["--text", "  "], "the text is empty"),
        (
            "patch",
            ["--text", "the film was good", "--corrupted", "the film", "--answer", " plot"],
            "same length",
        ),
        (
            "patch",
            ["--text", "the film", "--corrupted", "the plot", "--answer", " plot story"],
            "one token",
        ),
        ("saliency", ["--text", "the film"], "--template and --verbalizer"),
    ],
)
def test_bad_input_is_one_clear_line(monkeypatch, capsys, dirs, tmp_path, verb, extra, message):
    code, _, stderr = run_cli(
        monkeypatch, capsys, "inspect", verb, dirs["gpt"], *extra, "--out", tmp_path
    )
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert stderr.count("\n") == 1


def test_evaluate_report_explains_the_worst_errors(monkeypatch, capsys, dirs, tmp_path):
    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", dirs["clf"], "--data", dirs["data"],
                                   "--report-dir", tmp_path, "--explain", "3")  # fmt: skip
    assert code == 0, stderr
    md = (tmp_path / "test-report.md").read_text()
    assert "most confident errors, explained" in md
    sal = json.loads((tmp_path / "test-saliency.json").read_text())
    assert 1 <= len(sal["examples"]) <= 3
    for ex in sal["examples"]:
        assert "true" in ex["title"] and "predicted" in ex["title"]
        assert abs(ex["delta"]) <= 0.01 * abs(ex["f_input"] - ex["f_baseline"]) + 1e-4
    assert (tmp_path / "test-saliency.html").is_file()
    code, _, _ = run_cli(monkeypatch, capsys, "evaluate", dirs["clf"], "--data", dirs["data"],
                         "--report-dir", tmp_path / "plain", "--explain", "0")  # fmt: skip
    assert code == 0 and not (tmp_path / "plain" / "test-saliency.html").exists()
