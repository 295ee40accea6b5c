"""What each compression stage costs and gains: parameters, file size, speed, quality.

One row per stage (original, pruned, distilled, quantized), written as `report.json`, a Markdown
table `report.md` and a plot `report.png` in the pipeline's out dir.

    parameters   stored numbers (nonzero ones separately: unstructured pruning zeroes but keeps)
    file size    bytes of the weight files (model.safetensors and any quantized or adapter file)
    speed        examples/s (classifier: batches of `batch` test examples, forward only) or
                 tokens/s (causal LM: forward over `batch` windows), at `threads` CPU threads,
                 the best of `repeats` timed passes after a warm-up
    quality      accuracy and macro-F1 on the test records (classifier) or held-out perplexity
                 PPL = exp(mean NLL) (causal LM)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.utils.fs import atomic_write_text

WEIGHT_SUFFIXES = (".safetensors",)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(stored numbers, nonzero numbers) over parameters and buffers kept in the state dict,
    each storage counted once (tied weights)."""
    seen: set[int] = set()
    total = nonzero = 0
    for t in model.state_dict().values():
        if not torch.is_tensor(t) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel()
        nonzero += int(torch.count_nonzero(t)) if t.is_floating_point() else t.numel()
    return total, nonzero


def file_size(model_dir: str | Path) -> int:
    """Bytes of the weight files in a model dir (all *.safetensors at its top level)."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors") if p.is_file())


@torch.inference_mode()
def throughput(
    run: Callable[[dict[str, torch.Tensor]], Any],
    batches: list[dict[str, torch.Tensor]],
    units: Callable[[dict[str, torch.Tensor]], int],
    threads: int = 2,
    repeats: int = 3,
) -> float:
    """Units (examples or tokens) per second of `run` over `batches`: the best of `repeats`
    timed passes after one warm-up batch, with torch set to `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run(batches[0])
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in batches:
                run(b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return sum(units(b) for b in batches) / best


def stage_row(
    stage: str,
    model: nn.Module,
    model_dir: str | Path,
    quality: dict[str, float],
    speed: float,
    speed_unit: str,
) -> dict[str, Any]:
    """One report row (JSON-ready)."""
    total, nonzero = count_parameters(model)
    return {
        "stage": stage,
        "model_dir": str(model_dir),
        "parameters": total,
        "nonzero_parameters": nonzero,
        "file_bytes": file_size(model_dir),
        "speed": round(speed, 2),
        "speed_unit": speed_unit,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **{k: round(v, 6) for k, v in quality.items()},
    }


def _relative(rows: list[dict[str, Any]]) -> Iterable[tuple[dict[str, Any], dict[str, str]]]:
    first = rows[0]
    for row in rows:
        yield (
            row,
            {
                "size": f"{row['file_bytes'] / max(1, first['file_bytes']):.1%}",
                "speed": f"{row['speed'] / max(1e-9, first['speed']):.2f}x",
            },
        )


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, title: str) -> Path:
    """report.json, report.md and report.png (size, speed and quality per stage) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps({"title": title, "stages": rows},
                                                          indent=2) + "\n")  # fmt: skip
    quality_keys = [k for k in ("accuracy", "macro_f1", "perplexity") if k in rows[0]]
    head = ["stage", "parameters (nonzero)", "file", "size vs original", "speed", "speedup"]
    lines = [f"# {title}", "", "| " + " | ".join(head + quality_keys) + " |",
             "|" + "---|" * (len(head) + len(quality_keys))]  # fmt: skip
    for row, rel in _relative(rows):
        cells = [
            row["stage"],
            f"{row['parameters'] / 1e6:.2f}M ({row['nonzero_parameters'] / 1e6:.2f}M)",
            f"{row['file_bytes'] / 2**20:.1f} MiB",
            rel["size"],
            f"{row['speed']:.1f} {row['speed_unit']}",
            rel["speed"],
        ]
        cells += [f"{row[k]:.4f}" if k != "perplexity" else f"{row[k]:.2f}" for k in quality_keys]
        lines.append("| " + " | ".join(cells) + " |")
    load = rows[-1]["load_average"]
    lines += ["", f"Load average at the last measurement: {load} (a shared machine shows here)."]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    _plot(rows, quality_keys, out_dir / "report.png", title)
    return out_dir / "report.md"


def _plot(rows: list[dict[str, Any]], quality_keys: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"] for r in rows]
    panels = [("file (MiB)", [r["file_bytes"] / 2**20 for r in rows]),
              (f"speed ({rows[0]['speed_unit']})", [r["speed"] for r in rows])]  # fmt: skip
    if quality_keys:
        panels.append((quality_keys[0], [r[quality_keys[0]] for r in rows]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (label, values) in zip(axes, panels, strict=True):
        ax.bar(names, values, color="#4c72b0")
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
