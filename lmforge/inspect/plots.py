"""PNG pictures of the interpretability views (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmforge.utils.fs import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _plt().close(fig)
    return path


def plot_attention_grid(
    patterns: dict[int, np.ndarray],
    heads: Sequence[int],
    tokens: Sequence[str],
    key_tokens: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Layers as rows, heads as columns, each cell the (T, T_k) attention map; token labels on
    the outer axes when the sequence is short enough to read."""
    plt = _plt()
    layers = sorted(patterns)
    rows, cols = len(layers), len(heads)
    cell = 2.2 if max(len(tokens), len(key_tokens)) <= 16 else 3.0
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.2 + cell * cols, 0.8 + cell * rows), dpi=100, squeeze=False
    )
    labelled = len(tokens) <= 24
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(patterns[layer][c], cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
                if labelled:
                    ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
            if r == rows - 1 and labelled:
                ax.set_xticks(range(len(key_tokens)), key_tokens, fontsize=6, rotation=90)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    labels: Sequence[Sequence[str]] | None = None,
    signed: bool = False,
    colorbar: str = "",
) -> Path:
    """A rows x columns heatmap, optionally with a text label in each cell (top tokens)."""
    plt = _plt()
    n_r, n_c = values.shape
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.75 * n_c, 22), min(1.8 + 0.42 * n_r, 16)), dpi=110)
    if signed:
        peak = float(np.abs(values).max()) or 1.0
        image = ax.imshow(values, cmap="RdBu", vmin=-peak, vmax=peak, aspect="auto")
    else:
        image = ax.imshow(values, cmap="Blues", aspect="auto")
    ax.set_xticks(range(n_c), columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), rows, fontsize=8)
    if labels is not None and n_r * n_c <= 900:
        high = float(np.nanmax(np.abs(values))) or 1.0
        for i in range(n_r):
            for j in range(n_c):
                dark = abs(values[i, j]) > 0.6 * high
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label=colorbar)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_saliency(
    tokens: Sequence[str], scores: Sequence[float], path: str | Path, title: str = ""
) -> Path:
    """One bar per token: green pushes the score up, red pulls it down."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(2.0 + 0.35 * len(tokens), 22), 3.2), dpi=110)
    colors = ["#2ca02c" if s >= 0 else "#d62728" for s in scores]
    ax.bar(range(len(tokens)), scores, color=colors)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("attribution")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
