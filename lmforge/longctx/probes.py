"""Probes of how well a model uses long context.

- passkey retrieval: a random number hidden at a chosen depth of filler text of a chosen length;
  the model is asked for it at the end and must continue with its digits (greedy decoding).
- perplexity by context length: PPL(L) = exp(mean NLL of the tokens of windows of L tokens),
  which shows whether the model still predicts well beyond the length it was trained at.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.generate import GenerationConfig, generate
from lmforge.models import Transformer
from lmforge.utils.fs import atomic_path, atomic_write_text
from lmforge.utils.progress import bar

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
QUESTION = " What is the pass key? The pass key is"


def _needle(key: str) -> str:
    return f" The pass key is {key}. Remember it. {key} is the pass key."


def passkey_documents(n_docs: int, max_filler: int = 40, seed: int = 0) -> list[str]:
    """Synthetic training documents of the passkey task: filler sentences with the key hidden at
    a random depth, then the question and the answer. Mixed into pretraining text they teach a
    small model to retrieve, so that a probe at longer lengths measures position handling."""
    rng = random.Random(seed)
    sentences = [s.strip() + "." for s in FILLER.split(".") if s.strip()]
    docs = []
    for _ in range(n_docs):
        key = str(rng.randint(10000, 99999))
        n = rng.randint(0, max_filler)
        filler = [rng.choice(sentences) for _ in range(n)]
        at = rng.randint(0, n)
        body = " ".join(filler[:at]) + _needle(key) + " " + " ".join(filler[at:])
        docs.append(f"{body.strip()}{QUESTION} {key}.")
    return docs


@dataclass
class PasskeyResult:
    """Accuracy of passkey retrieval by context length (tokens) and depth (fraction)."""

    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float]]  # [length][depth]
    trials: int
    samples: list[dict] = field(default_factory=list)

    def table(self) -> str:
        head = "| length \\ depth | " + " | ".join(f"{d:.0%}" for d in self.depths) + " | mean |"
        rule = "|---" * (len(self.depths) + 2) + "|"
        rows = [
            f"| {n} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {np.mean(accs):.2f} |"
            for n, accs in zip(self.lengths, self.accuracy, strict=True)
        ]
        return "\n".join([head, rule, *rows])


def _passkey_prompt(tokenizer, length: int, depth: float, key: str) -> list[int]:
    """Token ids of filler with the needle at `depth`, ending with the question; ~`length` long."""
    filler_ids = tokenizer.encode(FILLER)
    needle = tokenizer.encode(_needle(key))
    question = tokenizer.encode(QUESTION)
    start = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    room = length - len(needle) - len(question) - len(start)
    if room < 0:
        raise ConfigError(
            f"length {length} is too short for the passkey prompt; use at least {length - room}."
        )
    body = (filler_ids * (room // max(1, len(filler_ids)) + 1))[:room]
    at = int(round(depth * room))
    return start + body[:at] + needle + body[at:] + question


def passkey_probe(
    model: Transformer,
    tokenizer,
    lengths: list[int],
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> PasskeyResult:
    """Retrieval accuracy for every (length, depth): the share of trials whose greedy
    continuation starts with the key's digits; `progress` shows a bar over the cells."""
    rng = random.Random(seed)
    accuracy, samples = [], []
    cells = bar(range(len(lengths) * len(depths)), len(lengths) * len(depths), "passkey",
                unit="cell", enabled=progress)  # fmt: skip
    for length in lengths:
        row = []
        for depth in depths:
            next(cells)
            keys = [str(rng.randint(10000, 99999)) for _ in range(trials)]
            prompts = [_passkey_prompt(tokenizer, length, depth, k) for k in keys]
            gen = GenerationConfig(max_new_tokens=8, temperature=0.0)
            with torch.no_grad():
                outs = generate(model, prompts, gen)
            hits = 0
            for key, out in zip(keys, outs, strict=True):
                text = tokenizer.decode(out)
                digits = "".join(ch for ch in text if ch.isdigit())
                hits += digits.startswith(key)
                samples.append({"length": length, "depth": depth, "key": key, "output": text})
            row.append(hits / trials)
        accuracy.append(row)
    next(cells, None)  # closes the bar
    return PasskeyResult(list(lengths), list(depths), accuracy, trials, samples)


def plot_passkey(
    result: PasskeyResult, out_png: str | Path, title: str = "passkey retrieval"
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(
        figsize=(1.2 * len(result.depths) + 2, 0.6 * len(result.lengths) + 1.8), dpi=110
    )
    im = ax.imshow(np.array(result.accuracy), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(result.depths)), [f"{d:.0%}" for d in result.depths])
    ax.set_yticks(range(len(result.lengths)), [str(n) for n in result.lengths])
    ax.set_xlabel("depth of the key in the context")
    ax.set_ylabel("context length (tokens)")
    for i, row in enumerate(result.accuracy):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title(title)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png


@dataclass
class PplByLength:
    lengths: list[int]
    ppl: list[float]
    tokens: list[int]

    def table(self) -> str:
        rows = [
            f"| {n} | {p:.2f} | {t} |"
            for n, p, t in zip(self.lengths, self.ppl, self.tokens, strict=True)
        ]
        return "\n".join(
            ["| context length | perplexity | tokens scored |", "|---|---|---|", *rows]
        )


def ppl_by_length(
    model: Transformer,
    tokens: np.ndarray,
    lengths: list[int],
    batch_size: int = 4,
    max_windows: int = 16,
    progress: bool = False,
) -> PplByLength:
    """Perplexity of the same stretch of text cut into windows of each length L.

    The stretch is `max_windows` windows of the longest length (or all the text, if shorter),
    so every L scores the same tokens and only the context each token gets differs.
    `progress` shows a bar over the lengths.
    """
    device = next(model.parameters()).device
    span = min(len(tokens) - 1, max_windows * max(lengths))
    ppls, counts = [], []
    for length in bar(lengths, len(lengths), "ppl by length", unit="length", enabled=progress):
        n_windows = span // length
        if n_windows < 1:
            raise DataError(
                f"the text has {len(tokens)} tokens, fewer than one window of {length}; add text."
            )
        total, n = 0.0, 0
        for at in range(0, n_windows, batch_size):
            idx = np.arange(at, min(at + batch_size, n_windows))[:, None] * length + np.arange(
                length + 1
            )
            w = torch.from_numpy(tokens[idx].astype(np.int64)).to(device)
            with torch.no_grad():
                logits = model(w[:, :-1]).logits
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), w[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            n += w[:, 1:].numel()
        ppls.append(math.exp(total / n))
        counts.append(n)
    return PplByLength(list(lengths), ppls, counts)


def ppl_figure(results: dict[str, PplByLength], trained_len: int | None = None):
    """One line per model: perplexity against context length (log 2 x-axis ticked at the
    measured lengths; a log y-axis only when perplexity spans 10x or more, else linear so the
    ticks stay readable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, r in results.items():
        ax.plot(r.lengths, r.ppl, "o-", label=name)
    if trained_len:
        ax.axvline(trained_len, color="gray", linestyle="--", linewidth=1, label="trained length")
    ax.set_xscale("log", base=2)
    lengths = sorted({n for r in results.values() for n in r.lengths})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    values = [p for r in results.values() for p in r.ppl if p > 0]
    if values and max(values) / min(values) >= 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter(useOffset=False))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_ppl(
    results: dict[str, PplByLength], out_png: str | Path, trained_len: int | None = None
) -> Path:
    """Save `ppl_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = ppl_figure(results, trained_len)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png


def save_json(obj, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=lambda o: o.__dict__))
