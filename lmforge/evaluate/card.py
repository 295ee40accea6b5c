"""A run's report card: one self-contained HTML page of any run dir (pretrain or fine-tune).

Sections: summary, configuration (train, model, fine-tune), data, curves (loss with accuracy,
every other logged eval_* metric, learning rate) as inline base64 PNGs, evaluation (the scores
of metrics.json / summary.json and the images the reports wrote), samples (samples.jsonl or
samples.txt when present), speed (training tokens/s) and hardware (hardware.json, recorded by
the machine that trained). Nothing here loads a model; missing pieces are said to be missing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.utils.fs import atomic_write_text
from lmforge.utils.plots import ACCURACY_KEYS, loss_figure, read_metrics, run_kind

CARD_FILE = "report.html"
HARDWARE_FILE = "hardware.json"

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:960px;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.2rem .6rem;
text-align:left;font-size:.92rem}th{background:#f5f5f7}img{max-width:100%}
.muted{color:#6e6e73}pre{background:#f5f5f7;padding:.6rem;white-space:pre-wrap}
details{margin:.4rem 0}
"""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _table(rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _img(buffer.getvalue(), "curve")


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _series_figure(records: list[dict[str, Any]], key: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.plot(*zip(*points, strict=True), "o-" if len(points) < 30 else "-", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def hardware_info() -> dict[str, Any]:
    """This machine: OS, Python, PyTorch, CPU count and the accelerator (if any)."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["accelerator"] = "mps"
    return info


def _samples(run_dir: Path) -> list[str]:
    texts: list[str] = []
    jsonl = run_dir / "samples.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                prompt, text = record.get("prompt", ""), record.get("text", record.get("output"))
                texts.append(f"{prompt}{text}" if text is not None else json.dumps(record))
    txt = run_dir / "samples.txt"
    if txt.is_file():
        texts += [t for t in txt.read_text(encoding="utf-8").split("\n\n") if t.strip()]
    return texts


def build_card(run_dir: str | Path) -> str:
    """The report card of `run_dir` as one HTML document (images inline, no external links).

    Raises LmforgeError when the folder is not a run dir (no metrics.jsonl, train_config.json,
    summary.json or metrics.json).
    """
    run_dir = Path(run_dir)
    markers = ("metrics.jsonl", "train_config.json", "summary.json", "metrics.json")
    if not run_dir.is_dir() or not any((run_dir / m).is_file() for m in markers):
        raise LmforgeError(
            f"{run_dir} is not a run dir (no metrics.jsonl, train_config.json or summary.json); "
            "give the --out folder of a pretrain or finetune run."
        )
    metrics_path = run_dir / "metrics.jsonl"
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    kind = run_kind(run_dir, records)
    summary = _read_json(run_dir / "summary.json") or {}
    scores = _read_json(run_dir / "metrics.json") or {}
    train_cfg = _read_json(run_dir / "train_config.json") or {}
    model_cfg = _read_json(run_dir / "config.json") or {}
    hardware = _read_json(run_dir / HARDWARE_FILE)
    name = html.escape(run_dir.resolve().name)
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{name}: lmforge report</title><style>{_STYLE}</style></head><body>",
        f"<h1>{name}</h1><p class='muted'>lmforge run report · {html.escape(kind)}</p>",
    ]

    steps = summary.get("steps", scores.get("steps"))
    if steps is None and records:
        steps = max((r.get("step", 0) for r in records), default=None)
    head: dict[str, Any] = {"task" if "task" in scores else "objective": kind, "steps": steps}
    for key in ("n_params", "best_eval_loss", "best_eval_ppl", "unigram_ppl", "method",
                "select_metric", "best_score", "best_step", "stopped_early", "trainable"):  # fmt: skip
        value = summary.get(key, scores.get(key))
        if value is not None:
            head[key] = value
    parts += ["<h2>Summary</h2>", _table(head)]

    parts.append("<h2>Curves</h2>")
    figure = loss_figure(records, kind)
    if figure is None:
        parts.append("<p class='muted'>no metrics.jsonl with a loss in this run dir.</p>")
    else:
        parts.append(_png(figure))
        shown = {"eval_loss", "eval_ppl", *ACCURACY_KEYS}
        extra = sorted({k for r in records for k in r if k.startswith("eval_")} - shown)
        if any("eval_ppl" in r for r in records):
            extra.insert(0, "eval_ppl")
        names = [
            (k, "held-out perplexity" if k == "eval_ppl" else f"held-out {k[5:]}") for k in extra
        ]
        for key, label in [*names, ("lr", "learning rate")]:
            fig = _series_figure(records, key, label)
            if fig is not None:
                parts.append(_png(fig))

    parts.append("<h2>Evaluation</h2>")
    evaluation = False
    best = summary.get("best_eval")
    if isinstance(best, dict) and best:
        parts += ["<h3>best held-out evaluation</h3>", _table(best)]
        evaluation = True
    for split in ("valid", "test"):
        split_scores = scores.get(split)
        if isinstance(split_scores, dict):
            flat = {k: v for k, v in split_scores.items() if not isinstance(v, (dict, list))}
            parts += [f"<h3>{split}</h3>", _table(flat)]
            evaluation = True
    for png in sorted(run_dir.glob("*.png")):
        if png.name != "loss.png":
            parts += [f"<h3>{html.escape(png.stem)}</h3>", _img(png.read_bytes(), png.stem)]
            evaluation = True
    for report in sorted(run_dir.glob("*-report.json")):
        report_scores = _read_json(report)
        if isinstance(report_scores, dict):
            flat = {k: v for k, v in report_scores.items() if not isinstance(v, (dict, list))}
            parts += [f"<h3>{html.escape(report.stem)}</h3>", _table(flat)]
            evaluation = True
    if not evaluation:
        parts.append("<p class='muted'>no held-out scores beyond the curves.</p>")

    samples = _samples(run_dir)
    if samples:
        parts.append("<h2>Samples</h2>")
        parts += [f"<pre>{html.escape(text)}</pre>" for text in samples]

    parts.append("<h2>Speed</h2>")
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    if speeds:
        speed = {
            "training tokens/s (median of logged steps)": statistics.median(speeds),
            "training tokens/s (last)": speeds[-1],
        }
        memory = [r["peak_mem_mb"] for r in records if "peak_mem_mb" in r]
        if memory:
            speed["peak memory (MB)"] = max(memory)
        parts.append(_table(speed))
    else:
        parts.append("<p class='muted'>no speed logged.</p>")

    data = {k: summary[k] for k in ("train_tokens", "valid_tokens") if k in summary}
    if "train_examples" in scores:
        data["train_examples"] = scores["train_examples"]
    if "labels" in scores:
        data["labels"] = scores["labels"]
    parts += ["<h2>Data</h2>", _table(data) if data else "<p class='muted'>not recorded.</p>"]

    config = ["<h2>Configuration</h2>"]
    for title, cfg in (("train", train_cfg), ("fine-tune", scores.get("finetune_config") or {}),
                             ("model", model_cfg)):  # fmt: skip
        if cfg:
            shown = " open" if title != "model" else ""
            config.append(f"<details{shown}><summary>{title}</summary>{_table(cfg)}</details>")
    if not (train_cfg or model_cfg):
        config.append("<p class='muted'>no train_config.json or config.json in this run dir.</p>")

    parts += config
    parts.append("<h2>Hardware</h2>")
    if isinstance(hardware, dict):
        if train_cfg.get("device"):
            hardware = {"device setting": train_cfg["device"], **hardware}
        parts.append(_table(hardware))
    else:
        parts.append(
            f"<p class='muted'>not recorded ({HARDWARE_FILE} is written at the end of a run).</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_card(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report card of `run_dir` to `out` (default `run_dir/report.html`), atomically."""
    path = Path(out) if out is not None else Path(run_dir) / CARD_FILE
    text = build_card(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def finish_run(run_dir: str | Path) -> Path:
    """At the end of a training run: record this machine in hardware.json, write report.html."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / HARDWARE_FILE, json.dumps(hardware_info(), indent=2) + "\n")
    return write_card(run_dir)
