"""`lmforge compress` (prune -> distill -> quantize with a report) and `lmforge prune` (pruning
alone), thin calls of `lmforge.compress`. `register(app)` adds both verbs to the main app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Prune = Annotated[str, typer.Option(help="structured (neurons + heads), magnitude or none.")]
FfnFraction = Annotated[float, typer.Option(help="structured: fraction of FFN neurons removed.")]
HeadFraction = Annotated[
    float, typer.Option(help="structured: fraction of attention heads (key/value groups) removed.")
]
Sparsity = Annotated[float, typer.Option(help="magnitude: fraction of block weights zeroed.")]
Scope = Annotated[str, typer.Option(help="layer (same fraction per block) or global.")]
Importance = Annotated[
    str, typer.Option(help="structured: magnitude or gradient (Michel et al., on --train).")
]


def compress(
    model_dir: Annotated[Path, typer.Argument(help="A fine-tuned classifier dir or a causal LM.")],
    out: Annotated[Path, typer.Option(help="Output dir: stage dirs and report.md/json/png.")],
    train: Annotated[Path | None, typer.Option(help="Training data for distillation.")] = None,
    valid: Annotated[Path | None, typer.Option(help="Validation data (best model).")] = None,
    test: Annotated[Path | None, typer.Option(help="Data every stage is scored on.")] = None,
    prune: Prune = "structured",
    ffn_fraction: FfnFraction = 0.4,
    head_fraction: HeadFraction = 0.25,
    sparsity: Sparsity = 0.5,
    scope: Scope = "layer",
    importance: Importance = "magnitude",
    prune_steps: Annotated[
        int, typer.Option(help="Pruning rounds; > 1 fine-tunes between rounds.")
    ] = 1,
    distill: Annotated[
        bool, typer.Option(help="Train after pruning with the original as teacher.")
    ] = True,
    method: Annotated[str, typer.Option(help="full or lora for the training.")] = "full",
    epochs: Annotated[float, typer.Option(help="Passes over --train when distilling.")] = 1.0,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Training steps (overrides epochs).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Training and scoring batch size.")] = 32,
    distill_alpha: Annotated[float, typer.Option(help="Weight a of the KL term.")] = 0.5,
    distill_temperature: Annotated[float, typer.Option(help="Temperature T.")] = 2.0,
    quantize: Annotated[
        str, typer.Option(help="int8, int4, dynamic-int8 or none (the last stage).")
    ] = "none",
    group_size: Annotated[int, typer.Option(help="Group size of weight-only quantization.")] = 128,
    quantize_embeddings: Annotated[
        bool, typer.Option(help="With --quantize, store the token embedding as int8 rows too.")
    ] = True,
    threads: Annotated[int, typer.Option(help="CPU threads of the speed measurement.")] = 2,
    speed_sort: Annotated[
        bool, typer.Option(help="Time the test examples batched by length (less padding).")
    ] = False,
    eval_limit: Annotated[
        int | None, typer.Option(help="Score only the first N test examples.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of training and data order.")] = 0,
) -> None:
    """Make a model smaller: prune, distil from the original, quantize; a report row per stage."""
    from lmforge.compress.pipeline import CompressConfig
    from lmforge.compress.pipeline import compress as run

    cc = CompressConfig(
        prune=prune, ffn_fraction=ffn_fraction, head_fraction=head_fraction, sparsity=sparsity,
        scope=scope, importance=importance, prune_steps=prune_steps, distill=distill,
        method=method, epochs=epochs, lr=lr, max_steps=max_steps, batch_size=batch_size,
        distill_alpha=distill_alpha, distill_temperature=distill_temperature, quantize=quantize,
        group_size=group_size, quantize_embeddings=quantize_embeddings, threads=threads,
        speed_sort=speed_sort, eval_limit=eval_limit, seed=seed,
    )  # fmt: skip
    result = run(model_dir, out, cc, train=train, valid=valid, test=test, log=typer.echo)
    typer.echo(f"final model in {result.final_dir}; report in {result.out_dir / 'report.md'}")


def prune(
    model_dir: Annotated[Path, typer.Argument(help="A model dir (fine-tuned or pretrained).")],
    out: Annotated[Path, typer.Option(help="Where to write the pruned model dir.")],
    method: Prune = "structured",
    ffn_fraction: FfnFraction = 0.4,
    head_fraction: HeadFraction = 0.25,
    sparsity: Sparsity = 0.5,
    scope: Scope = "layer",
    importance: Importance = "magnitude",
    train: Annotated[Path | None, typer.Option(help="Data for gradient importance.")] = None,
    importance_batches: Annotated[int, typer.Option(help="Batches scored for gradients.")] = 8,
) -> None:
    """Prune a model dir (no training): the result is a normal, smaller model dir."""
    from lmforge.compress.pipeline import CompressConfig, prune_to_dir

    cc = CompressConfig(prune=method, ffn_fraction=ffn_fraction, head_fraction=head_fraction,
                        sparsity=sparsity, scope=scope, importance=importance,
                        importance_batches=importance_batches)  # fmt: skip
    before, after = prune_to_dir(model_dir, out, cc, train=train)
    typer.echo(
        f"pruned {model_dir} -> {out}: {before / 1e6:.2f}M -> {after / 1e6:.2f}M nonzero "
        f"parameters ({1 - after / before:.1%} fewer)"
    )


def register(app: typer.Typer) -> None:
    """Add `compress` and `prune` to the main `lmforge` app."""
    app.command("compress")(compress)
    app.command("prune")(prune)
