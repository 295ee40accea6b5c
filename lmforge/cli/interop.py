"""`lmforge convert`, `lmforge embed` and `lmforge fill-mask`: checkpoints in and out, and using
imported encoders. `register(app)` adds the three verbs to the main app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lmforge.errors import ConfigError


def convert(
    out: Annotated[Path, typer.Option(help="Directory to write.")],
    from_hf: Annotated[
        Path | None, typer.Option("--from-hf", help="A Hugging Face model dir to import.")
    ] = None,
    to_hf: Annotated[
        Path | None, typer.Option("--to-hf", help="An lmforge model dir to export.")
    ] = None,
    from_gguf: Annotated[
        Path | None,
        typer.Option("--from-gguf", help="A .gguf file (llama or gpt2 architecture) to import."),
    ] = None,
    to_gguf: Annotated[
        Path | None,
        typer.Option("--to-gguf", help="An lmforge model dir (llama or gpt2 family) to export."),
    ] = None,
    type: Annotated[
        str, typer.Option("--type", help="GGUF storage of the matrices: f32, f16, q8_0 or q4_0.")
    ] = "f16",
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out that is not this verb's output.")
    ] = False,
) -> None:
    """Convert a checkpoint: Hugging Face (gpt2, llama, bert, t5) both ways, GGUF (llama, gpt2)
    both ways (with --to-gguf, --out is the .gguf file)."""
    sources = {
        "--from-hf": from_hf,
        "--to-hf": to_hf,
        "--from-gguf": from_gguf,
        "--to-gguf": to_gguf,
    }
    given = [flag for flag, value in sources.items() if value is not None]
    if len(given) != 1:
        got = "none" if not given else " and ".join(given)
        raise ConfigError(
            "pass exactly one of --from-hf DIR, --to-hf DIR, --from-gguf FILE or --to-gguf DIR "
            f"(got {got})."
        )
    from lmforge.config import ModelConfig
    from lmforge.interop import export_hf, import_gguf, import_hf
    from lmforge.utils.fs import prepare_out_dir

    if to_gguf is not None:
        from lmforge.interop.gguf_export import export_gguf

        if out.exists() and (out.is_dir() or not overwrite):
            what = "a folder" if out.is_dir() else "a file that exists"
            raise ConfigError(
                f"--out {out} is {what}; name a new .gguf file"
                + ("." if out.is_dir() else ", or pass --overwrite to replace it.")
            )
        export_gguf(to_gguf, out, type)
        typer.echo(f"exported {to_gguf} as GGUF ({type}) to {out}")
        return
    prepare_out_dir(out, "convert", inputs=[from_hf, to_hf, from_gguf], overwrite=overwrite)
    if from_hf is not None:
        import_hf(from_hf, out)
    elif from_gguf is not None:
        import_gguf(from_gguf, out)
    else:
        export_hf(to_hf, out)
        typer.echo(f"exported {to_hf} as a Hugging Face model to {out}")
        return
    cfg = ModelConfig.from_dir(out)
    what = "Hugging Face model" if from_hf is not None else "GGUF file"
    typer.echo(
        f"imported {what} {from_hf or from_gguf} to {out} ({cfg.arch}, "
        f"{cfg.n_layer} layers, d_model={cfg.d_model}, vocab={cfg.vocab_size}, "
        f"heads={list(cfg.heads)})"
    )


def embed(
    model_dir: Annotated[Path, typer.Argument(help="An lmforge model dir (e.g. imported MiniLM).")],
    text: Annotated[list[str], typer.Option("--text", help="A text to embed; repeat for more.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print texts, embeddings and cosines as JSON.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
    normalize: Annotated[bool, typer.Option(help="L2-normalise the embeddings.")] = True,
) -> None:
    """Mean-pooled sentence embeddings.

    One text: its vector on one line. Several: the cosine-similarity matrix. --json: everything.
    """
    from lmforge.recipes.embed import cosine_matrix
    from lmforge.recipes.embed import embed as run

    vectors = run(model_dir, text, batch_size=batch_size, normalize=normalize)
    cosine = cosine_matrix(vectors)
    if as_json:
        data = {
            "texts": text,
            "dim": vectors.shape[1],
            "embeddings": [[round(v, 7) for v in row] for row in vectors.tolist()],
            "cosine": [[round(v, 6) for v in row] for row in cosine.tolist()],
        }
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    if len(text) == 1:
        typer.echo(" ".join(f"{v:.6f}" for v in vectors[0].tolist()))
        return
    typer.echo(f"cosine similarity of {len(text)} texts ({vectors.shape[1]}-dim embeddings):")
    for i, row in enumerate(cosine.tolist()):
        typer.echo(f"[{i}] " + " ".join(f"{v:7.4f}" for v in row) + f"  {text[i][:60]}")


def fill_mask(
    model_dir: Annotated[Path, typer.Argument(help="An lmforge model dir with an MLM head.")],
    text: Annotated[str, typer.Option("--text", help='Text with the mask token, e.g. "[MASK]".')],
    top_k: Annotated[int, typer.Option(help="Predictions per mask.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON.")] = False,
) -> None:
    """List the most likely tokens for each mask token in a text."""
    from lmforge.recipes.fill_mask import fill_mask as run

    predictions = run(model_dir, text, top_k=top_k)
    if as_json:
        data = [[{"token": t, "prob": round(p, 6)} for t, p in preds] for preds in predictions]
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    for n, preds in enumerate(predictions, start=1):
        if len(predictions) > 1:
            typer.echo(f"mask {n}:")
        for rank, (token, prob) in enumerate(preds, start=1):
            typer.echo(f"{rank:3d}. {token:<20s} {prob:.4f}")


def register(app: typer.Typer) -> None:
    """Add `convert`, `embed` and `fill-mask` to the main `lmforge` app."""
    app.command("convert")(convert)
    app.command("embed")(embed)
    app.command("fill-mask")(fill_mask)
