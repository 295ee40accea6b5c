"""Load a model dir and serve it: `serve` (blocking, as `lmforge serve` runs it) and
`BackgroundServer` (a server on a free localhost port in a thread, for tests and benchmarks)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from lmforge.errors import ServeError
from lmforge.generate import GenerationConfig
from lmforge.generate.speculative import _check as check_speculative
from lmforge.recipes.finetuned import load_finetuned
from lmforge.recipes.generate import load_draft
from lmforge.serve.admission import Admission, free_memory, kv_bytes_per_token
from lmforge.serve.app import check_api_key, create_app
from lmforge.serve.engine import Engine
from lmforge.serve.errors import error_body
from lmforge.serve.offload import OffloadedTokenizer
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
    transform: Callable[[str], Any] | None = None,
    draft: str | Path | None = None,
    draft_k: int = 4,
    compile: bool | str = False,
) -> FastAPI:
    """Load `model_dir` (model + tokenizer) and return the app; the app's lifespan runs the
    decoding engine. The model is served under `model_name` (default: the dir's name).

    `draft`: a smaller model dir with the same tokenizer (checked by `load_draft`); requests
    it supports decode speculatively (`draft_k` tokens per round) in a lane of their own while
    that lane is free and the continuous batch idle (`lmforge.serve.lanes`).

    `compile`: torch.compile the continuous batch's decode step (True, "regional" or "whole"),
    compiled here, before the app is returned, so that no request waits for it."""
    model_dir = Path(model_dir)
    check_api_key(api_key)
    if max_batch < 1:
        raise ServeError(f"--max-batch must be at least 1, got {max_batch}.")
    if draft_k < 1:
        raise ServeError(f"--draft-k must be at least 1, got {draft_k}.")
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
    helper = None
    if draft is not None:
        helper = load_draft(draft, tokenizer).to(where, _DTYPES[dtype]).eval()
        check_speculative(model, helper, GenerationConfig(), draft_k)
    limits = limits or Limits()
    per_token = kv_bytes_per_token(model, _DTYPES[dtype])
    per_row = 9 * model.cfg.vocab_size  # float32 logits and counts, bool seen-mask
    kv = limits.kv_bytes if limits.kv_bytes is not None else free_memory(where) // 2
    admission = Admission(limits.max_requests, kv, per_token, per_row)
    served = Served(
        name=model_name or model_dir.resolve().name,
        tokenizer=OffloadedTokenizer(tokenizer),  # long prompts: no GIL shared with the loop
        context=model.cfg.max_seq_len,
        vocab_size=min(model.cfg.vocab_size, tokenizer.vocab_size),
        created=int(time.time()),
        limits=limits,
        max_token_chars=max(map(len, tokenizer.backend.get_vocab()))
        if tokenizer.kind == "bpe"
        else None,
        transform=transform,
        dtype=dtype,
    )
    engine = Engine(model, tokenizer, max_batch, draft=helper, draft_k=draft_k, compile=compile)
    engine.batcher.warm_up()
    app = create_app(engine, served, api_key, admission)
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
    limits: Limits | None = None,
    max_connections: int = 4096,
    transform: Callable[[str], Any] | None = None,
    draft: str | Path | None = None,
    draft_k: int = 4,
    compile: bool | str = False,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve `model_dir` over HTTP until interrupted (uvicorn); SIGTERM or Ctrl-C stops it
    within a few seconds, requests in flight included. `ready()` is called once the model
    (and draft) loaded, before the server starts listening."""
    import uvicorn

    app = build_app(
        model_dir,
        api_key=api_key,
        max_batch=max_batch,
        model_name=model_name,
        device=device,
        dtype=dtype,
        limits=limits,
        transform=transform,
        draft=draft,
        draft_k=draft_k,
        compile=compile,
    )
    if ready is not None:
        ready()
    show_log(log_level)
    raise_open_file_limit()
    uvicorn.Server(uvicorn_config(app, host, port, log_level, max_connections)).run()


def show_log(level: str = "info") -> None:
    """Print the server's own log lines (one per request: lane, speed, the draft's acceptance)
    to stderr as uvicorn prints its own, from `level` up."""
    from uvicorn.logging import DefaultFormatter

    logger = logging.getLogger("lmforge.serve")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # once, even if the root logger prints too


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (each connection is a
    file); returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


#: Seconds a client may take to send a request's headers (its body: `Limits.body_seconds`).
HEADER_SECONDS = 10.0
#: Past the connection limit, a connection still without headers after this long makes room.
EVICT_AFTER_SECONDS = 2.0
#: Seconds requests in flight get to finish when the server is asked to stop.
GRACEFUL_SECONDS = 2


def uvicorn_config(
    app: FastAPI, host: str, port: int, log_level: str = "info", max_connections: int = 4096
) -> Any:
    """uvicorn's settings for serving `app`: header, keep-alive and shutdown timeouts, at most
    `max_connections` open connections (fewer when the open-file limit is lower)."""
    import resource

    import uvicorn

    if max_connections < 1:
        raise ServeError(f"--max-connections must be at least 1, got {max_connections}.")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and max_connections > soft - 128:
        logging.getLogger("lmforge.serve").warning(
            "--max-connections %d lowered to %d by the open-file limit (ulimit -n %d)",
            max_connections,
            max(soft - 128, 1),
            soft,
        )
        max_connections = max(soft - 128, 1)
    protocol = _guarded_h11(max_connections)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        h11_max_incomplete_event_size=64 * 1024,
    )


def _guarded_h11(max_connections: int) -> type:
    """uvicorn's h11 protocol with a header timeout and a connection limit."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps(
        error_body(
            "the server has too many open connections; retry shortly.",
            "server_error",
            code="too_many_connections",
        )
    ).encode()
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"connection: close\r\nretry-after: 1\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    log = logging.getLogger("lmforge.serve")
    last_warning = [0.0]

    class GuardedH11(H11Protocol):
        """Closes a connection whose request headers are not in after HEADER_SECONDS (the
        first request's or a kept-alive connection's next). Past `max_connections`, the
        connection that has waited longest for its headers, if longer than
        EVICT_AFTER_SECONDS, makes room for the new one (a flood of half-open sockets cannot
        lock clients out, and a client whose headers are merely not read yet keeps its place);
        with none such, the new connection is answered 503."""

        _header_timer: Any = None
        _armed_for: Any = None
        _armed_at = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                cutoff = time.monotonic() - EVICT_AFTER_SECONDS
                waiting = [
                    c
                    for c in self.connections
                    if c is not self and c._waiting() and c._armed_at < cutoff
                ]
                if waiting:
                    min(waiting, key=lambda c: c._armed_at).transport.close()
                else:
                    now = time.monotonic()
                    if now - last_warning[0] > 10:  # one line, not one per refused socket
                        last_warning[0] = now
                        log.warning(
                            "refusing connections past --max-connections %d", max_connections
                        )
                    transport.write(busy)
                    transport.close()
                    return
            self._arm()

        def _waiting(self) -> bool:
            """True while the connection waits for a request's headers."""
            return (
                self._header_timer is not None
                and self.cycle is self._armed_for
                and not self.transport.is_closing()
            )

        def _arm(self) -> None:
            self._disarm()
            self._armed_for, self._armed_at = self.cycle, time.monotonic()
            self._header_timer = self.loop.call_later(HEADER_SECONDS, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is self._armed_for and not self.transport.is_closing():
                self.transport.close()  # no complete request line and headers in time

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._armed_for:
                self._disarm()  # the headers arrived: the body has its own timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11


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

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_connections: int = 4096,
    ) -> None:
        import uvicorn

        self._socket = None
        if port is None:  # bound here and handed to uvicorn: no other process can take it first
            self._socket = socket.socket()
            self._socket.bind((host, 0))
            port = self._socket.getsockname()[1]
        self.host, self.port = host, port
        config = uvicorn_config(app, self.host, self.port, "warning", max_connections)
        self.server = uvicorn.Server(config)
        sockets = None if self._socket is None else [self._socket]
        self._thread = threading.Thread(
            target=self.server.run, args=(sockets,), name="lmforge-uvicorn", daemon=True
        )

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
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
