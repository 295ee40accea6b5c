"""Load a model dir and serve it: `serve` (blocking, as `lmforge serve` runs it) and
`BackgroundServer` (a server on a free localhost port in a thread, for tests and benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch
from fastapi import FastAPI

from lmforge.errors import ServeError
from lmforge.recipes.finetuned import load_finetuned
from lmforge.serve.app import create_app
from lmforge.serve.engine import Engine
from lmforge.serve.playground import mount_playground
from lmforge.serve.protocol import Limits, Served
from lmforge.tokenizer import Tokenizer
from lmforge.utils.device import resolve_device

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_app(
    model_dir: str | Path,
    *,
    api_key: str | None = None,
    max_batch: int = 16,
    model_name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    limits: Limits | None = None,
) -> FastAPI:
    """Load `model_dir` (model + tokenizer) and return the app; the app's lifespan runs the
    decoding engine. The model is served under `model_name` (default: the dir's name)."""
    model_dir = Path(model_dir)
    if max_batch < 1:
        raise ServeError(f"--max-batch must be at least 1, got {max_batch}.")
    if dtype not in ("auto", *_DTYPES):
        raise ServeError(f"unknown dtype '{dtype}'; use auto, {', '.join(_DTYPES)}.")
    where = resolve_device(device)
    model = load_finetuned(model_dir, device=where)
    if model.cfg.arch != "decoder" or "lm" not in model.cfg.heads:
        raise ServeError(
            f"{model_dir} holds a {model.cfg.arch} model; the server needs a decoder-only "
            "model with an LM head."
        )
    if dtype == "auto":
        dtype = "bfloat16" if where.type == "cuda" else "float32"
    model = model.to(_DTYPES[dtype]).eval()
    tokenizer = Tokenizer.load(model_dir)
    served = Served(
        name=model_name or model_dir.resolve().name,
        tokenizer=tokenizer,
        context=model.cfg.max_seq_len,
        vocab_size=min(model.cfg.vocab_size, tokenizer.vocab_size),
        created=int(time.time()),
        limits=limits or Limits(),
    )
    app = create_app(Engine(model, tokenizer, max_batch), served, api_key)
    mount_playground(app, model_dir, needs_key=api_key is not None)  # the web page at /
    return app


def serve(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    model_name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    log_level: str = "info",
) -> None:
    """Serve `model_dir` over HTTP until interrupted (uvicorn)."""
    import uvicorn

    app = build_app(
        model_dir,
        api_key=api_key,
        max_batch=max_batch,
        model_name=model_name,
        device=device,
        dtype=dtype,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on a free localhost port.

    Example:
        >>> with BackgroundServer(build_app("runs/quickstart")) as server:
        ...     client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="lmforge-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server did not start on {self.url}; is the port free?")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
