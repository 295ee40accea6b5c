"""`lmforge data <verb>`: prepare training data ahead of a run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)


@data_app.callback()
def _data() -> None:
    """Prepare training data (tokenize a corpus into memory-mapped token shards)."""


@data_app.command()
def prepare(
    data: Annotated[
        list[Path],
        typer.Option("--data", help="A .txt/.md/.json/.jsonl file or folder; repeat for more."),
    ],
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder (with tokenizer.json).")],
    out: Annotated[Path, typer.Option(help="Shard folder to write (new, empty, or earlier).")],
    workers: Annotated[int, typer.Option(help="Tokenizing processes.")] = 1,
    shard_tokens: Annotated[int, typer.Option(help="Tokens per shard, at least.")] = 50_000_000,
    valid_fraction: Annotated[
        float, typer.Option(help="Share of documents held out for validation.")
    ] = 0.01,
    seed: Annotated[int, typer.Option(help="Salt of the held-out choice.")] = 0,
) -> None:
    """Tokenize a corpus into memory-mapped token shards with a manifest."""
    from lmforge.data.shard_prepare import MANIFEST, prepare_shards

    began = time.perf_counter()
    prepare_shards(
        data,
        tokenizer,
        out,
        workers=workers,
        shard_tokens=shard_tokens,
        valid_fraction=valid_fraction,
        seed=seed,
    )
    seconds = time.perf_counter() - began
    totals = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["totals"]
    train, valid = totals["train"], totals["valid"]
    tokens = train["n_tokens"] + valid["n_tokens"]
    shards = train["n_shards"] + valid["n_shards"]
    typer.echo(
        f"prepared {tokens:,} tokens (train {train['n_tokens']:,}, valid {valid['n_tokens']:,}) "
        f"in {shards} shards in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s); "
        f"shards in {out}"
    )


@data_app.command()
def digits(
    out: Annotated[Path, typer.Option(help="Folder to write (images/, train/valid/test.csv).")],
    seed: Annotated[int, typer.Option(help="Seed of the 70/15/15 split.")] = 0,
) -> None:
    """Write scikit-learn's 1,797 real 8x8 handwritten digits as PNGs + CSVs with captions."""
    from lmforge.data.images import export_digits

    counts = export_digits(out, seed=seed)
    typer.echo(", ".join(f"{k} {v}" for k, v in counts.items()) + f" images in {out}")
