"""Training curves as PNG (matplotlib, headless), labelled for the run's task.

The y-axis names what the loss is per: tokens for language modelling (causal, seq2seq, SFT,
token tagging), examples for classification, selected tokens plus pairs for BERT's MLM + NSP.
Accuracies an evaluation logs go on a second axis from 0 to 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.utils.fs import atomic_path

# the eval_* accuracies a run may log, shown on the right-hand axis
ACCURACY_KEYS = ("eval_accuracy", "eval_token_acc", "eval_mlm_acc", "eval_nsp_acc", "eval_macro_f1")

_LOSS_LABELS = {
    "classify": "cross-entropy (nats/example)",
    "mlm-nsp": "MLM + NSP cross-entropy (nats)",
    "tokens": "cross-entropy (nats/tagged token)",
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a run still writing) is passed over."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_kind(run_dir: str | Path, records: list[dict[str, Any]] | None = None) -> str:
    """The run's task: a fine-tune's `task` (task.json), else the pretraining objective
    (summary.json; MLM + NSP also recognised from its logged metrics), else "causal-lm"."""
    run_dir = Path(run_dir)
    for name, key in (("task.json", "task"), ("summary.json", "objective")):
        path = run_dir / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get(key)
            except (json.JSONDecodeError, AttributeError):
                value = None
            if isinstance(value, str):
                return value
    if records and any("eval_mlm_loss" in r or "eval_nsp_acc" in r for r in records):
        return "mlm-nsp"
    return "causal-lm"


def loss_label(kind: str) -> str:
    """The y-axis label of the loss curve for a task or objective."""
    return _LOSS_LABELS.get(kind, "cross-entropy (nats/token)")


def loss_figure(records: list[dict[str, Any]], kind: str):
    """A matplotlib Figure of train and held-out loss against step, with logged accuracies on
    a second axis; None when the records hold no loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        style = "-" if len(train) >= 30 else ".-"  # a short run's few points stay visible
        ax.plot(*zip(*train, strict=True), style, label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label(kind))
    ax.ticklabel_format(axis="y", useOffset=False)  # 7.85, not 0.0005 + 7.853
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    accuracies = [k for k in ACCURACY_KEYS if any(k in r for r in records)]
    if accuracies:
        right = ax.twinx()
        for i, key in enumerate(accuracies):
            points = [(r["step"], r[key]) for r in records if key in r]
            right.plot(*zip(*points, strict=True), "s--", color=f"C{i + 2}", label=key[5:])
        right.set_ylim(0, 1)
        right.set_ylabel("held-out accuracy" if len(accuracies) == 1 else "held-out score (0-1)")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best")
    fig.tight_layout()
    return fig


def plot_losses(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Plot training `loss`, held-out `eval_loss` and logged accuracies against `step` from a
    metrics.jsonl, labelled for the run (its dir is the metrics file's folder)."""
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig = loss_figure(records, run_kind(Path(metrics_path).parent, records))
    if fig is None:
        return None
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png
