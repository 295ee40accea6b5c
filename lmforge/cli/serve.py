"""`lmforge serve` (an OpenAI-compatible HTTP server) and `lmforge chat` (a terminal chat).
`register(app)` adds both verbs to the main app."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from lmforge.cli.genopts import GenOptions, compile_choice, generation_options
from lmforge.cli.knowledge import KgOpt, KgTemplatesOpt, RetrieveKOpt, RetrieveOpt, prompt_transform


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
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Most tokens one choice may generate (also the default).")
    ] = 4096,
    max_requests: Annotated[
        int, typer.Option(min=1, help="Requests in flight at once; one more gets 429.")
    ] = 256,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections at once (past it, 503).")
    ] = 4096,
    kv_memory_gb: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="KV-cache memory for all requests (default: half of what is free)."
        ),
    ] = None,
    retrieve: RetrieveOpt = None,
    retrieve_k: RetrieveKOpt = 3,
    kg: KgOpt = None,
    kg_templates: KgTemplatesOpt = None,
    draft: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="A small model dir with the same tokenizer: a greedy or unseeded sampling "
            "request without penalties or logprobs decodes speculatively while this lane is "
            "free (the rest join the batch); usage.speculative reports the acceptance rate.",
        ),
    ] = None,
    draft_k: Annotated[int, typer.Option(min=1, help="Draft tokens per round with --draft.")] = 4,
    compile: Annotated[
        bool,
        typer.Option(
            help="torch.compile the batch's decode step before serving (two graphs serve every "
            "batch size; about 75 s for a 135M model on 2 CPU cores, cold): 1.2-1.3x the "
            "eager tokens/s for 16 clients x 128 tokens on CPU. Prompts (prefill), beams and "
            "the draft lane stay eager."
        ),
    ] = False,
    compile_mode: Annotated[
        str | None,
        typer.Option(
            help="With --compile: 'regional' (the default: runs of 6 blocks, about 75 s for a "
            "135M model on 2 cores) or 'whole' (the step as one graph with frozen weights: "
            "about 220 s, and on CPU about 1.35x eager at 16 rows against regional's 1.2x)."
        ),
    ] = None,
) -> None:
    """Serve a model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions);
    beam search (num_beams) and, with --draft, speculative decoding run in lanes beside the
    continuous batch."""
    from lmforge.serve import Limits
    from lmforge.serve import serve as run
    from lmforge.serve.app import check_api_key
    from lmforge.utils.device import bf16_pays_here, resolve_device

    if api_key is None and "LMFORGE_API_KEY" in os.environ:
        api_key = os.environ["LMFORGE_API_KEY"]  # click reads an empty variable as unset
    check_api_key(api_key)
    if kv_memory_gb is not None and not math.isfinite(kv_memory_gb):
        raise typer.BadParameter("must be a finite number of GB.", param_hint="--kv-memory-gb")
    kv = None if kv_memory_gb is None else int(kv_memory_gb * 2**30)
    limits = Limits(max_tokens=max_tokens, max_requests=max_requests, kv_bytes=kv)
    compiled = compile_choice(compile, compile_mode)
    fp32_on_cpu = dtype == "auto" and resolve_device(device).type == "cpu"
    if fp32_on_cpu and bf16_pays_here(parameter_count(model_dir)):
        typer.echo(
            "note: this CPU has AMX bf16 units; --dtype bfloat16 serves batches 1.2-1.6x "
            "faster than float32 (more with --compile --compile-mode whole), with text that "
            "can differ from float32's where two tokens are nearly tied.",
            err=True,
        )
    if compiled:
        typer.echo("compiling the decode step before serving (--compile)...")
    lane = f", speculative lane with draft {draft} (k={draft_k})" if draft is not None else ""
    announce = (
        f"serving {model_dir} on http://{host}:{port}/v1 (max batch {max_batch}{lane}); "
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
        limits=limits,
        max_connections=max_connections,
        transform=prompt_transform(retrieve, retrieve_k, kg, kg_templates),
        draft=draft,
        draft_k=draft_k,
        compile=compiled,
        ready=lambda: typer.echo(announce),  # once the model (and draft) loaded
    )


@generation_options(max_new_tokens=256, temperature=0.7, top_p=0.95)
def chat(
    model_dir: Annotated[Path, typer.Argument(help="A model dir with its tokenizer.")],
    gen: GenOptions,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    stats: Annotated[
        bool, typer.Option(help="After each reply, print tokens/s and time to first token.")
    ] = False,
    retrieve: RetrieveOpt = None,
    retrieve_k: RetrieveKOpt = 3,
    kg: KgOpt = None,
    kg_templates: KgTemplatesOpt = None,
) -> None:
    """Chat with a model in the terminal (/reset clears, /exit quits); reads stdin when piped."""
    from lmforge.recipes.chat import chat as run

    run(
        model_dir,
        system=system,
        gen=gen.config,
        draft=gen.draft,
        draft_k=gen.draft_k,
        compile=gen.compile,
        stats=stats,
        transform=prompt_transform(retrieve, retrieve_k, kg, kg_templates),
    )


def register(app: typer.Typer) -> None:
    """Add `serve` and `chat` to the main `lmforge` app."""
    app.command("serve")(serve)
    app.command("chat")(chat)


def parameter_count(model_dir: Path) -> int:
    """The parameters of the model in `model_dir`, counted from its config on the meta device
    (nothing allocated); 0 when the dir holds no readable lmforge config (loading the model
    then says what is wrong)."""
    import torch

    from lmforge.config import ModelConfig
    from lmforge.errors import LmforgeError
    from lmforge.models import Transformer

    try:
        cfg = ModelConfig.from_dir(model_dir)
    except (LmforgeError, OSError, ValueError):
        return 0
    with torch.device("meta"):
        return Transformer(cfg).num_parameters()
