"""`lmforge quantize`: a quantized copy of a checkpoint (int8 / int4 weight-only, dynamic int8).
`register(app)` adds the verb to the main app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def quantize(
    model_dir: Annotated[Path, typer.Argument(help="An lmforge model dir to quantize.")],
    out: Annotated[Path, typer.Option(help="Directory to write (not the model dir itself).")],
    method: Annotated[
        str,
        typer.Option(
            help="int8 (weight-only, per channel), int4 (weight-only, per group) or "
            "dynamic-int8 (weights and activations; for encoders such as BERT classifiers)."
        ),
    ] = "int8",
    group_size: Annotated[int, typer.Option(help="Inputs per int4 group: 32, 64 or 128.")] = 128,
    skip: Annotated[
        list[str] | None,
        typer.Option("--skip", help="Module name pattern to keep in float (e.g. lm_head); repeat."),
    ] = None,
) -> None:
    """Quantize the linear layers of a checkpoint and write it as safetensors + config.json."""
    from lmforge.recipes.quantize import quantize_checkpoint

    r = quantize_checkpoint(model_dir, out, method, group_size, skip)  # type: ignore[arg-type]
    mb = 1024 * 1024
    typer.echo(
        f"quantized {len(r.modules)} linear layers of {model_dir} to {r.method}: weights "
        f"{r.bytes_before / mb:.1f} MiB -> {r.bytes_after / mb:.1f} MiB; wrote {r.out_dir}"
    )


def register(app: typer.Typer) -> None:
    """Add `quantize` to the main `lmforge` app."""
    app.command("quantize")(quantize)
