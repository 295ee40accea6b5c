"""`lmforge finetune` and `lmforge evaluate` on fine-tuned models, through the CLI entry point."""

from __future__ import annotations

import json
import shutil
import sys

from cli_helpers import run_cli
from ft_helpers import tagged_rows, write_csv, write_jsonl

TRAIN = ["batch_size=16", "lr=1e-2", "device=cpu", "precision=fp32", "warmup_steps=2"]


def test_finetune_lora_then_evaluate(monkeypatch, capsys, tmp_path, gpt_pretrained, classify_files):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "finetune", gpt_pretrained, "--task", "classify",
        "--train", classify_files["train"], "--valid", classify_files["valid"],
        "--test", classify_files["test"], "--out", out, "--method", "lora",
        "--lora-targets", "*_proj", "--lora-r", "4", "--epochs", "2", "--max-len", "7", *TRAIN,
    )  # fmt: skip
    assert code == 0, err
    assert "valid: accuracy" in stdout and "macro_f1" in stdout and "test: accuracy" in stdout
    assert stdout.startswith("trainable")
    # the cut texts are counted on one line per split, never silently
    assert "warning: " in err and " of 96 training examples were longer than 7 tokens" in err
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["method"] == "lora" and m["finetune_config"]["lora_r"] == 4

    data = tmp_path / "data" / "held.csv"
    data.parent.mkdir()
    shutil.copy(classify_files["test"], data)
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", out, "--data", data)
    assert code == 0, err
    assert "warning: 24 of 24 evaluation examples were longer than 7 tokens" in err
    assert stdout.startswith("accuracy") and "macro_f1" in stdout
    for name in ("held-report.md", "held-confusion.png", "held-report.json"):
        assert (out / name).is_file(), name  # into the run dir, never next to the data
    assert sorted(p.name for p in data.parent.iterdir()) == ["held.csv"]
    report = json.loads((out / "held-report.json").read_text(encoding="utf-8"))
    assert report["accuracy"] == m["test"]["accuracy"]  # the adapter is applied on load
    # the run's report card: written at the end of the run, and again with the evaluation
    assert "test-confusion" in (out / "report.html").read_text(encoding="utf-8")
    code, stdout, err = run_cli(monkeypatch, capsys, "report", out)
    assert code == 0, err
    card = (out / "report.html").read_text(encoding="utf-8")
    assert "<h3>held-report</h3>" in card
    assert "eval_ppl" not in (out / "metrics.jsonl").read_text(encoding="utf-8")


def test_failed_lora_targets_leave_no_run_dir(monkeypatch, capsys, tmp_path, gpt_pretrained,
                                              classify_files):  # fmt: skip
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "finetune", gpt_pretrained, "--task", "classify",
        "--train", classify_files["train"], "--out", out, "--method", "lora",
        "--lora-targets", "*.no_such_layer", *TRAIN,
    )  # fmt: skip
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_evaluate_a_tagger_and_user_errors(monkeypatch, capsys, tmp_path, bases, bert_classifier):
    train = write_jsonl(tmp_path / "train.jsonl", tagged_rows(48, 0))
    valid = write_csv(tmp_path / "valid.csv", tagged_rows(16, 1))
    out = tmp_path / "tagger"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "finetune", bases["bert"], "--task", "tokens", "--train", train,
        "--valid", valid, "--out", out, "max_steps=6", *TRAIN,
    )  # fmt: skip
    assert code == 0, err
    assert "entity_f1" in stdout
    code, stdout, err = run_cli(
        monkeypatch, capsys, "evaluate", out, "--data", valid, "--report-dir", tmp_path / "rep"
    )
    assert code == 0, err
    assert "entity_f1" in stdout and (tmp_path / "rep" / "valid-report.md").is_file()

    # a label the model never saw, a missing column, an empty file: one line, exit code 2
    unseen = write_csv(tmp_path / "unseen.csv", [{"text": "so so", "label": "neutral"}])
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", bert_classifier.out_dir, "--data", unseen
    )
    assert code == 2 and "label 'neutral'" in err and len(err.strip().splitlines()) == 1
    wrong = write_csv(tmp_path / "wrong.csv", [{"sentence": "good", "y": "pos"}])
    code, _, err = run_cli(
        monkeypatch, capsys, "finetune", bases["bert"], "--task", "classify", "--train", wrong,
        "--out", tmp_path / "x",
    )  # fmt: skip
    assert code == 2 and "columns found: 'sentence', 'y'" in err
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    code, _, err = run_cli(
        monkeypatch, capsys, "finetune", bases["bert"], "--task", "classify", "--train",
        tmp_path / "empty.jsonl", "--out", tmp_path / "x",
    )  # fmt: skip
    assert code == 2 and "holds no examples" in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finetune_under_torchrun_ddp(tmp_path, bases, classify_files):
    """The same verb on 2 CPU processes (gloo): rank 0 alone writes and reports."""
    import os
    import subprocess

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
        f"--master-port={_free_port()}", "-m", "lmforge", "finetune", str(bases["bert"]),
        "--task", "classify", "--train", str(classify_files["train"]),
        "--valid", str(classify_files["valid"]), "--out", str(out), "--strategy", "ddp",
        "--epochs", "1", "batch_size=8", "device=cpu", "precision=fp32", "warmup_steps=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("valid: accuracy") == 1, proc.stdout
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert 0.0 <= m["valid"]["accuracy"] <= 1.0
    assert (out / "model.safetensors").is_file()
