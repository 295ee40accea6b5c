"""Long-context verbs: `extend-context`, `probe passkey`, `probe ppl-by-length`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

probe_app = typer.Typer(help="Measure how a model uses long context.", no_args_is_help=True)

DataOpt = Annotated[
    list[Path] | None, typer.Option("--data", help="Text file or folder; repeat for more.")
]


def _lengths(text: str) -> list[int]:
    from lmforge.errors import ConfigError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--lengths must be comma-separated integers such as 512,1024, got '{text}'."
        ) from None
    if not values or min(values) < 8:
        raise ConfigError(f"--lengths needs positive lengths of at least 8 tokens, got '{text}'.")
    return values


def extend_context(
    model_dir: Annotated[Path, typer.Argument(help="A RoPE checkpoint directory.")],
    out: Annotated[Path, typer.Option(help="Output run directory.")],
    factor: Annotated[float, typer.Option(help="Context stretch factor s.")] = 4.0,
    method: Annotated[str, typer.Option(help="pi, ntk or yarn.")] = "yarn",
    data: DataOpt = None,
    steps: Annotated[int, typer.Option(help="Fine-tuning steps (0 = config change only).")] = 200,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value train settings.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out that is not this verb's output.")
    ] = False,
) -> None:
    """Extend a RoPE model's context (PI, NTK or YaRN) with a short fine-tune."""
    from lmforge.config.train import parse_overrides
    from lmforge.recipes.extend_context import extend_context as run
    from lmforge.utils.fs import prepare_out_dir

    prepare_out_dir(out, "extend-context", inputs=[model_dir, *(data or [])], overwrite=overwrite)
    r = run(model_dir, out, factor=factor, method=method, data=data, steps=steps,
            overrides=parse_overrides(overrides or []))  # fmt: skip
    typer.echo(f"context extended to {r.max_seq_len} tokens with {method}; model in {r.out_dir}")


def _warn_past_context(model, lengths: list[int]) -> None:
    """One line on stderr when a probe length is past the context the model was built for."""
    context = model.cfg.max_seq_len
    past = [n for n in lengths if n > context]
    if past:
        typer.echo(
            f"warning: length(s) {', '.join(map(str, past))} are past the {context} tokens this "
            "model was trained or extended for (max_seq_len); expect them to measure the "
            "breakdown, or extend the context first (`lmforge extend-context`).",
            err=True,
        )


@probe_app.command("passkey")
def passkey(
    model_dir: Annotated[Path, typer.Argument(help="A checkpoint directory.")],
    lengths: Annotated[str, typer.Option(help="Context lengths in tokens.")] = "512,1024,2048,4096",
    trials: Annotated[int, typer.Option(help="Keys per (length, depth).")] = 4,
    out: Annotated[
        Path | None, typer.Option(help="Write passkey.json and passkey.png here.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the keys.")] = 0,
) -> None:
    """Passkey retrieval accuracy by context length and depth (table + heatmap)."""
    from lmforge.longctx import passkey_probe, plot_passkey
    from lmforge.longctx.probes import save_json
    from lmforge.models import load_model
    from lmforge.tokenizer import Tokenizer

    model, tok = load_model(model_dir), Tokenizer.load(model_dir)
    _warn_past_context(model, _lengths(lengths))
    result = passkey_probe(model, tok, _lengths(lengths), trials=trials, seed=seed, progress=True)
    typer.echo(result.table())
    out = out or Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_json(result, out / "passkey.json")
    plot_passkey(result, out / "passkey.png", title=f"passkey retrieval: {Path(model_dir).name}")
    typer.echo(f"wrote {out / 'passkey.json'} and {out / 'passkey.png'}")


@probe_app.command("ppl-by-length")
def ppl_by_length_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A checkpoint directory.")],
    data: DataOpt = None,
    lengths: Annotated[str, typer.Option(help="Context lengths in tokens.")] = "128,256,512,1024",
    out: Annotated[Path | None, typer.Option(help="Write ppl_by_length.json/png here.")] = None,
) -> None:
    """Perplexity against context length (table + plot); default text: the embedded corpus."""
    from lmforge.data import default_corpus, read_documents
    from lmforge.data.lm import tokens_from_documents
    from lmforge.longctx import plot_ppl, ppl_by_length
    from lmforge.longctx.probes import save_json
    from lmforge.models import load_model
    from lmforge.tokenizer import Tokenizer

    model, tok = load_model(model_dir), Tokenizer.load(model_dir)
    tokens = tokens_from_documents(tok, read_documents(data) if data else default_corpus())
    _warn_past_context(model, _lengths(lengths))
    result = ppl_by_length(model, tokens, _lengths(lengths), progress=True)
    typer.echo(result.table())
    out = out or Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_json(result, out / "ppl_by_length.json")
    trained = model.cfg.rope_original_max_seq_len or model.cfg.max_seq_len
    plot_ppl({Path(model_dir).name: result}, out / "ppl_by_length.png", trained_len=trained)
    typer.echo(f"wrote {out / 'ppl_by_length.json'} and {out / 'ppl_by_length.png'}")


def register(app: typer.Typer) -> None:
    app.command("extend-context")(extend_context)
    app.add_typer(probe_app, name="probe")
