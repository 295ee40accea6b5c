"""Reports of a fine-tuned model's scores: Markdown tables and a confusion-matrix PNG.

Input is the JSON-ready dict of `lmforge.evaluate.metrics.classification_report` (classify) or
`entity_scores` (tokens), plus any extra numbers (loss). Nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.utils.fs import atomic_path, atomic_write_text


def plot_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """A heatmap of confusion counts (rows true, columns predicted), each cell written out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    size = min(2.5 + 0.6 * k, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), [str(label) for label in labels], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(label) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    if k <= 30:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                color = "white" if value > peak / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def classification_markdown(report: dict[str, Any], title: str, png: str | None = None) -> str:
    """Accuracy, macro scores, a per-class table and the confusion matrix as Markdown."""
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key in ("n", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        lines.append(f"| {key} | {_num(report[key])} |")
    if "loss" in report:
        lines.append(f"| loss | {_num(report['loss'])} |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, s in report["per_class"].items():
        lines.append(
            f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
            f"{s['support']} |"
        )
    labels = [str(label) for label in report["labels"]]
    lines += ["", "Confusion matrix (rows true, columns predicted):", ""]
    lines += ["| true \\ predicted | " + " | ".join(labels) + " |"]
    lines += ["|---" * (len(labels) + 1) + "|"]
    for name, row in zip(labels, report["confusion_matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    if png:
        lines += ["", f"![confusion matrix]({png})"]
    return "\n".join(lines) + "\n"


def entity_markdown(scores: dict[str, Any], title: str) -> str:
    """Entity precision/recall/F1 overall and per type as Markdown."""
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key in ("entity_precision", "entity_recall", "entity_f1", "token_acc", "loss"):
        if key in scores:
            lines.append(f"| {key} | {_num(scores[key])} |")
    for key in ("n_true", "n_pred", "n_correct"):
        lines.append(f"| entities {key[2:]} | {scores[key]} |")
    lines += ["", "| type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, s in scores["per_type"].items():
        lines.append(
            f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
            f"{s['support']} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    scores: dict[str, Any], task: str, out_dir: str | Path, stem: str, title: str, extra: str = ""
) -> list[Path]:
    """Write `<stem>-report.md` (and `<stem>-confusion.png` for classify) into out_dir; returns
    the paths. `extra` is Markdown appended to the report (e.g. explained errors)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if task == "classify":
        png = plot_confusion(
            scores["confusion_matrix"],
            [str(label) for label in scores["labels"]],
            out_dir / f"{stem}-confusion.png",
            title,
        )
        text = classification_markdown(scores, title, png.name)
        written.append(png)
    elif task == "tokens":
        text = entity_markdown(scores, title)
    else:
        rows = "\n".join(
            f"| {k} | {_num(v)} |" for k, v in scores.items() if not isinstance(v, dict | list)
        )
        text = f"# {title}\n\n| metric | value |\n|---|---|\n{rows}\n"
    md = out_dir / f"{stem}-report.md"
    atomic_write_text(md, text + extra)
    return [md, *written]
