"""`lmforge prompt`: zero/few-shot classification by prompting a model, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmforge.cli.knowledge import KgOpt, KgTemplatesOpt, RetrieveKOpt, RetrieveOpt, prompt_transform


def prompt(
    model_dir: Annotated[Path, typer.Argument(help="A masked-LM or causal-LM model directory.")],
    template: Annotated[
        str, typer.Option(help='Prompt with {text} and the slot, e.g. "{text} It was [MASK]."')
    ],
    verbalizer: Annotated[
        list[str], typer.Option(help="LABEL=word[,word]; repeat for every label.")
    ],
    data: Annotated[Path, typer.Option(help=".jsonl/.csv/.tsv with text (and label) fields.")],
    task: Annotated[str, typer.Option(help="What to do; only 'classify' for now.")] = "classify",
    shots: Annotated[int, typer.Option(help="Demonstrations per prompt (K).")] = 0,
    pool: Annotated[
        Path | None, typer.Option(help="Labelled file to draw demonstrations from (default: data).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the demonstration draws.")] = 0,
    calibrate: Annotated[
        bool, typer.Option(help="Contextual calibration with content-free inputs.")
    ] = False,
    out: Annotated[
        Path, typer.Option(help="Directory for predictions.jsonl and metrics.json.")
    ] = Path("runs/prompt"),
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    label_field: Annotated[str, typer.Option(help="Field holding the label.")] = "label",
    separator: Annotated[
        str, typer.Option(help="Text between demonstrations (\\n allowed).")
    ] = "\\n\\n",
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    retrieve: RetrieveOpt = None,
    retrieve_k: RetrieveKOpt = 3,
    kg: KgOpt = None,
    kg_templates: KgTemplatesOpt = None,
) -> None:
    """Classify texts by prompting: cloze with masked LMs, label likelihood with causal LMs."""
    from collections import Counter

    from lmforge.errors import ConfigError
    from lmforge.prompting import prompt_classify

    if task != "classify":
        raise ConfigError(f"unknown task '{task}'; lmforge prompt supports --task classify.")
    r = prompt_classify(
        model_dir,
        data,
        template,
        verbalizer,
        shots=shots,
        pool=pool,
        seed=seed,
        calibrated=calibrate,
        out=out,
        text_field=text_field,
        label_field=label_field,
        separator=separator.replace("\\n", "\n").replace("\\t", "\t"),
        batch_size=batch_size,
        device=device,
        transform=prompt_transform(retrieve, retrieve_k, kg, kg_templates),
    )
    how = f"{r.mode} scoring, {shots}-shot{', calibrated' if calibrate else ''}"
    n = len(r.predictions)
    if r.accuracy is not None:
        typer.echo(f"accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f} on {n} examples ({how})")
    else:
        counts = Counter(p.prediction for p in r.predictions)
        shown = ", ".join(f"{y} {counts[y]}" for y in r.labels)
        typer.echo(f"predicted {n} unlabelled examples: {shown} ({how})")
    if r.truncated:
        typer.echo(f"{r.truncated} prompt(s) were shortened to fit the model")
    typer.echo(f"predictions in {r.out_dir / 'predictions.jsonl'}")  # type: ignore[operator]


def register(app: typer.Typer) -> None:
    """Add the `prompt` verb to the `lmforge` app."""
    app.command("prompt")(prompt)
