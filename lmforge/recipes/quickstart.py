"""`lmforge quickstart`: tokenizer, GPT pretraining, evaluation and samples on the embedded corpus.

Everything runs on a laptop CPU in a few minutes with no download: a byte-level BPE tokenizer is
trained on the Python documentation that ships with CPython, a `gpt-mini` (about 10M parameters
at its full vocabulary) learns from it, the held-out perplexity is compared with a unigram
baseline, and three samples are printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from lmforge.evaluate.card import write_card
from lmforge.recipes.generate import generate_from_dir
from lmforge.recipes.pretrain import PretrainResult, pretrain
from lmforge.utils.fs import atomic_write_text

QUICKSTART_SETTINGS = {
    "vocab_size": 4096,
    "seq_len": 128,
    "batch_size": 16,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 30,
    "eval_every": 50,
    "eval_batches": 8,
    "dropout": 0.1,
}
PROMPTS = ("The for statement", "A class definition", "")


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    max_steps: int = 200,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> PretrainResult:
    """Run the whole pipeline end to end and print where everything was written."""
    out = Path(out)
    t0 = time.perf_counter()
    typer.echo(
        f"lmforge quickstart: training a tokenizer and a GPT on the embedded corpus -> {out}"
    )
    settings = {**QUICKSTART_SETTINGS, "max_steps": max_steps, "seed": seed}
    result = pretrain(
        None, out, preset="gpt-mini", overrides=settings, progress=progress, overwrite=overwrite
    )
    ppl = result.eval_ppl
    typer.echo("")
    typer.echo(
        f"model: {result.n_params / 1e6:.2f}M parameters, {result.train.steps} steps, "
        f"{result.train_tokens:,} training tokens"
    )
    if ppl is not None:
        typer.echo(
            f"held-out perplexity {ppl:.1f} vs unigram baseline {result.unigram_ppl:.1f} "
            f"({result.unigram_ppl / ppl:.1f}x lower)"
        )
    typer.echo("")
    samples = []
    for i, prompt in enumerate(PROMPTS):
        text = generate_from_dir(
            out, prompt, max_new_tokens=48, temperature=0.8, top_k=50, seed=seed + i
        )[0]
        shown = (prompt + text).replace("\n", " ").strip()
        typer.echo(f"sample {i + 1}: {shown}")
        samples.append(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False))
    atomic_write_text(out / "samples.jsonl", "\n".join(samples) + "\n")
    write_card(out)  # again, now with the samples
    typer.echo("")
    typer.echo(f"model + tokenizer : {out}/model.safetensors, config.json, tokenizer.json")
    typer.echo(f"last checkpoint   : {out}/checkpoints/step-{result.train.steps:08d}")
    typer.echo(f"metrics           : {out}/metrics.jsonl")
    typer.echo(f"loss curve        : {out}/loss.png")
    typer.echo(f"report card       : {out}/report.html (samples.jsonl)")
    typer.echo(
        f'done in {time.perf_counter() - t0:.0f} s. Next: lmforge generate {out} --prompt "..."'
    )
    return result
