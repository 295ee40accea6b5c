"""`lmforge inspect attention|lens|patch|saliency`: look inside a model; each view writes HTML
(standalone, offline), PNG and JSON into --out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

inspect_app = typer.Typer(
    help="Look inside a model: attention maps, logit lens, activation patching, saliency.",
    no_args_is_help=True,
)

ModelArg = Annotated[Path, typer.Argument(help="A model dir (plain or fine-tuned).")]
TextOpt = Annotated[str, typer.Option("--text", help="The text to inspect.")]
OutOpt = Annotated[Path, typer.Option(help="Folder for the HTML, PNG and JSON files.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, ...")]


def _ints(spec: str | None, what: str) -> list[int] | None:
    from lmforge.errors import ConfigError

    if spec is None or spec.strip() in ("", "all"):
        return None
    try:
        return [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"--{what} '{spec}' is not a list of numbers; write e.g. --{what} 0,3 or 'all'."
        ) from None


def _done(paths: list[Path]) -> None:
    for p in paths:
        typer.echo(f"wrote {p}")


@inspect_app.command("attention")
def attention(
    model_dir: ModelArg,
    text: TextOpt,
    out: OutOpt = Path("runs/inspect"),
    layers: Annotated[str | None, typer.Option(help="Layers, e.g. 0,5 (default all).")] = None,
    heads: Annotated[str | None, typer.Option(help="Heads, e.g. 0,3 (default all).")] = None,
    rollout: Annotated[bool, typer.Option(help="Also attention rollout (all layers).")] = True,
    device: DeviceOpt = "cpu",
) -> None:
    """Head view and model view (one HTML file), a layer x head PNG, weights as JSON."""
    from lmforge.recipes.inspect import inspect_attention

    _done(inspect_attention(model_dir, text, out, layers=_ints(layers, "layers"),
                            heads=_ints(heads, "heads"), rollout=rollout, device=device))  # fmt: skip


@inspect_app.command("lens")
def lens(
    model_dir: ModelArg,
    text: TextOpt,
    out: OutOpt = Path("runs/inspect"),
    top_k: Annotated[int, typer.Option(help="Top tokens kept per cell.")] = 5,
    device: DeviceOpt = "cpu",
) -> None:
    """Logit lens (layer x position, top tokens) and direct logit attribution per head/MLP."""
    from lmforge.recipes.inspect import inspect_lens

    _done(inspect_lens(model_dir, text, out, k=top_k, device=device))


@inspect_app.command("patch")
def patch(
    model_dir: ModelArg,
    text: TextOpt,
    corrupted: Annotated[str, typer.Option(help="The corrupted prompt (same token count).")],
    answer: Annotated[str, typer.Option(help="Clean answer: a one-token word or a label.")],
    wrong: Annotated[
        str | None, typer.Option(help="Corrupted answer; the metric is their logit difference.")
    ] = None,
    out: OutOpt = Path("runs/inspect"),
    site: Annotated[
        str, typer.Option(help="resid_pre, resid_mid, resid_post, attn.out or mlp.out.")
    ] = "resid_pre",
    device: DeviceOpt = "cpu",
) -> None:
    """Activation patching (layer x position, layer x head): what restores the clean answer."""
    from lmforge.recipes.inspect import inspect_patch

    _done(inspect_patch(model_dir, text, corrupted, answer, out, wrong=wrong, site=site,
                        device=device))  # fmt: skip


@inspect_app.command("saliency")
def saliency(
    model_dir: ModelArg,
    text: Annotated[list[str], typer.Option("--text", help="Text to explain; repeat for more.")],
    out: OutOpt = Path("runs/inspect"),
    label: Annotated[
        str | None, typer.Option(help="Label to explain (default: predicted).")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(help='Prompt template for a plain LM, e.g. "{text} It was [MASK]."'),
    ] = None,
    verbalizer: Annotated[
        list[str] | None, typer.Option(help="LABEL=word[,word] with --template; repeat.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Integrated-gradients steps.")] = 64,
    device: DeviceOpt = "cpu",
) -> None:
    """Integrated gradients and gradient x input per token, as highlighted text."""
    from lmforge.recipes.inspect import inspect_saliency

    _done(inspect_saliency(model_dir, text, out, label=label, template=template,
                           verbalizer=verbalizer, steps=steps, device=device))  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the `inspect` verbs to the `lmforge` app."""
    app.add_typer(inspect_app, name="inspect")
