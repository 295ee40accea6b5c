"""The run report card (`lmforge report`), task-labelled plots, and no perplexity where exp(loss)
is not one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from lmforge.errors import LmforgeError
from lmforge.evaluate.card import build_card, finish_run, write_card
from lmforge.objectives import mlm_nsp_loss
from lmforge.objectives.lm import LossOutput
from lmforge.objectives.tasks import TaskObjective
from lmforge.train import evaluate_loss
from lmforge.utils.plots import loss_figure, plot_losses, read_metrics, run_kind


def _write_metrics(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in records) + "\n"
    (run / "metrics.jsonl").write_text(text + '{"step": 9, "lo', encoding="utf-8")  # torn line


def _classify_run(root: Path) -> Path:
    run = root / "clf"
    records = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "tokens_per_s": 500.0 + s,
                "peak_mem_mb": 100.0} for s in range(1, 7)]  # fmt: skip
    records += [{"step": 3, "eval_loss": 0.5, "eval_accuracy": 0.7, "eval_macro_f1": 0.6},
                {"step": 6, "eval_loss": 0.3, "eval_accuracy": 0.9, "eval_macro_f1": 0.85}]  # fmt: skip
    _write_metrics(run, records)
    (run / "task.json").write_text(json.dumps({"task": "classify", "labels": ["a", "b"]}))
    (run / "train_config.json").write_text(json.dumps({"max_steps": 6, "lr": 1e-3}))
    (run / "config.json").write_text(json.dumps({"arch": "encoder", "d_model": 32}))
    scores = {"task": "classify", "steps": 6, "method": "full", "labels": ["a", "b"],
              "train_examples": 40, "valid": {"accuracy": 0.9, "macro_f1": 0.85, "n": 10},
              "finetune_config": {"task": "classify", "epochs": 3}}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(scores))
    (run / "samples.txt").write_text("first <sample> & more\n\nsecond sample")
    return run


def _axis_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes]


def test_classification_plot_is_labelled_per_example_with_accuracy(tmp_path):
    run = _classify_run(tmp_path)
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 8  # the torn last line is passed over
    assert run_kind(run, records) == "classify"
    labels = _axis_labels(loss_figure(records, "classify"))
    assert labels[0] == "cross-entropy (nats/example)" and "nats/token" not in " ".join(labels)
    assert labels[1] == "held-out score (0-1)"  # accuracy and macro-F1 on the right axis
    legend = [t.get_text() for t in loss_figure(records, "classify").axes[0].get_legend().texts]
    assert "accuracy" in legend and "macro_f1" in legend
    assert plot_losses(run / "metrics.jsonl", run / "loss.png").stat().st_size > 1000


def test_objective_labels(tmp_path):
    lm = [{"step": 1, "loss": 5.0}, {"step": 2, "eval_loss": 4.0, "eval_ppl": 54.6}]
    assert _axis_labels(loss_figure(lm, run_kind(tmp_path, lm))) == ["cross-entropy (nats/token)"]
    bert = [{"step": 2, "eval_loss": 4.0, "eval_mlm_loss": 3.5, "eval_mlm_acc": 0.2,
             "eval_nsp_acc": 0.6}]  # fmt: skip
    assert run_kind(tmp_path, bert) == "mlm-nsp"
    assert _axis_labels(loss_figure(bert, "mlm-nsp")) == [
        "MLM + NSP cross-entropy (nats)",
        "held-out score (0-1)",
    ]
    assert loss_figure([{"step": 1, "lr": 0.1}], "causal-lm") is None


def test_card_is_one_self_contained_page(tmp_path):
    run = _classify_run(tmp_path)
    finish_run(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    for section in ("Summary", "Curves", "Evaluation", "Samples", "Speed", "Data",
                    "Configuration", "Hardware"):  # fmt: skip
        assert f"<h2>{section}</h2>" in page, section
    # nothing is fetched: every image is inline, no script, no link to anything
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert (
        "<script" not in page and len(re.findall(r'src="data:image/png;base64,', page)) == 2
    )  # loss + lr
    assert "first &lt;sample&gt; &amp; more" in page  # text is escaped
    hardware = json.loads((run / "hardware.json").read_text())
    assert hardware["torch"] == torch.__version__ and f"<td>{torch.__version__}</td>" in page
    assert "<th>train_examples</th><td>40</td>" in page
    assert "<th>training tokens/s (median of logged steps)</th><td>503.5</td>" in page


def test_report_verb_and_bad_dir(monkeypatch, capsys, tmp_path):
    run = _classify_run(tmp_path)
    out = tmp_path / "cards" / "clf.html"
    code, stdout, err = run_cli(monkeypatch, capsys, "report", run, "--out", out)
    assert code == 0, err
    assert str(out) in stdout and out.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert not (run / "report.html").exists()
    assert "not recorded" in out.read_text(encoding="utf-8")  # no hardware.json here
    code, stdout, err = run_cli(monkeypatch, capsys, "report", tmp_path / "nothing")
    assert code == 2 and err.count("\n") == 1 and "is not a run dir" in err
    with pytest.raises(LmforgeError):
        build_card(tmp_path)
    assert write_card(run).name == "report.html"


class _Stub(torch.nn.Module):
    def forward(self, x):
        return x


def _held_out(objective) -> dict[str, float]:
    batches = [{"x": torch.zeros(2)}]
    return evaluate_loss(_Stub(), objective, batches, torch.device("cpu"))


def test_eval_ppl_only_where_exp_loss_is_a_perplexity():
    def lm(model, batch):
        return LossOutput(torch.tensor(2.0), 4, {})

    assert set(_held_out(lm)) == {"eval_loss", "eval_ppl"}
    for objective in (TaskObjective("classify"), TaskObjective("tokens"), mlm_nsp_loss):
        assert objective.perplexity is False
    assert TaskObjective("sft").perplexity and TaskObjective("seq2seq").perplexity

    def classify(model, batch):
        return LossOutput(torch.tensor(0.5), 2, {"accuracy": 1.0})

    classify.perplexity = False
    assert set(_held_out(classify)) == {"eval_loss", "eval_accuracy"}


def test_playground_finds_the_report_card(tmp_path):
    from lmforge.serve.playground import report_card

    run = _classify_run(tmp_path)
    assert "<h2>Curves</h2>" in report_card(run)  # built from the run's files
    write_card(run)
    (run / "merged").mkdir()
    assert report_card(run / "merged") == (run / "report.html").read_text(encoding="utf-8")
    assert report_card(tmp_path / "empty") is None
