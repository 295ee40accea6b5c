"""`lmforge report RUN_DIR`: the run's self-contained HTML report card.
`register(app)` adds the verb to the main app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dir: Annotated[Path, typer.Argument(help="The --out dir of a pretrain or finetune run.")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (default: RUN_DIR/report.html).")
    ] = None,
) -> None:
    """Write one HTML report card of a run: config, data, curves, evaluation, speed, hardware."""
    from lmforge.evaluate.card import write_card

    path = write_card(run_dir, out)
    typer.echo(f"report card in {path} (one file; open it in a browser)")


def register(app: typer.Typer) -> None:
    """Add `report` to the main `lmforge` app."""
    app.command("report")(report)
