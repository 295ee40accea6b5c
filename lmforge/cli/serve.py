"""`lmforge serve` (an OpenAI-compatible HTTP server) and `lmforge chat` (a terminal chat).
`register(app)` adds both verbs to the main app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model_dir: Annotated[Path, typer.Argument(help="A model dir with its tokenizer.")],
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="LMFORGE_API_KEY", help="Require 'Authorization: Bearer KEY' (not on /health)."
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most sequences decoded together.")] = 16,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send (default: the dir's name).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1...")] = (
        "auto"
    ),
    dtype: Annotated[str, typer.Option(help="auto (bfloat16 on CUDA), float32, bfloat16.")] = (
        "auto"
    ),
) -> None:
    """Serve a model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions)."""
    from lmforge.serve import serve as run

    typer.echo(
        f"serving {model_dir} on http://{host}:{port}/v1 (max batch {max_batch}); "
        f"playground at http://{host}:{port}/"
    )
    run(
        model_dir,
        host=host,
        port=port,
        api_key=api_key,
        max_batch=max_batch,
        model_name=model_name,
        device=device,
        dtype=dtype,
    )


def chat(
    model_dir: Annotated[Path, typer.Argument(help="A model dir with its tokenizer.")],
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Chat with a model in the terminal (/reset clears, /exit quits)."""
    from lmforge.recipes.chat import chat as run

    run(
        model_dir,
        system=system,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )


def register(app: typer.Typer) -> None:
    """Add `serve` and `chat` to the main `lmforge` app."""
    app.command("serve")(serve)
    app.command("chat")(chat)
