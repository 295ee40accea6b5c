"""`lmforge eval`: run lm-evaluation-harness-style tasks on a model dir (one call of
`lmforge.evaluate.harness.evaluate_model`). `register(app)` adds the verb to the main app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def eval_tasks(
    model_dir: Annotated[Path, typer.Argument(help="A decoder model dir (lmforge or converted).")],
    tasks: Annotated[
        str,
        typer.Option(help="Comma-separated shipped task names or task YAML paths ('list' lists)."),
    ],
    out: Annotated[Path | None, typer.Option(help="Dir for results.json and results.md.")] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="Few-shot examples (default: each task's).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Score the first N documents per task.")] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps.")] = "cpu",
) -> None:
    """Evaluate a model on tasks in lm-evaluation-harness's YAML format; print the table."""
    from lmforge.evaluate.harness import available_tasks, evaluate_model, results_markdown

    if tasks.strip() == "list":
        typer.echo("\n".join(available_tasks()))
        return
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    report = evaluate_model(model_dir, names, out, num_fewshot=num_fewshot, limit=limit,
                            batch_size=batch_size, device=device)  # fmt: skip
    typer.echo(results_markdown([report]), nl=False)
    if out is not None:
        typer.echo(f"results in {out / 'results.json'} and {out / 'results.md'}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_tasks)
