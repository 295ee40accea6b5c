"""The OpenAI-compatible HTTP app (FastAPI).

    GET  /health                 liveness and load; never needs the API key
    GET  /v1/models              the one served model (and GET /v1/models/{id})
    POST /v1/completions         text completion, "stream": true for server-sent events
    POST /v1/chat/completions    chat completion through the tokenizer's chat template

Every request is checked (size, JSON, fields, limits, context) before it reaches the engine
(the continuous batch, or a lane beside it: beam search, speculative decoding);
every error, the app's own 404/405 included, is OpenAI's error envelope. With an API key, every
route but /health answers 401 unless the request carries `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from lmforge.errors import LmforgeError, ServeError
from lmforge.serve.admission import Admission, Reservation
from lmforge.serve.engine import Engine, EngineFailure, Ticket
from lmforge.serve.errors import ApiError, error_body
from lmforge.serve.playground import PUBLIC_PATHS
from lmforge.serve.protocol import Job, Limits, Served, plan_chat, plan_completion
from lmforge.serve.responses import Answer, Kind, sse

_PUBLIC = PUBLIC_PATHS | {"/health"}  # the playground page and assets hold no data


class _AuthGuard:
    """Pure ASGI middleware: 401 in OpenAI's envelope unless `Authorization: Bearer KEY`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PUBLIC:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        message = (
            "a valid API key is required; send the header 'Authorization: Bearer KEY'."
            if not header
            else "the API key is not valid; send the key the server was started with."
        )
        body = error_body(message, "invalid_request_error", code="invalid_api_key")
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


async def read_json(request: Request, limits: Limits) -> Any:
    """The decoded JSON body: 413 past `max_body_bytes`, 408 when the client takes longer than
    `body_seconds` to send it, 400 when it is not JSON or nests deeper than `max_json_depth`."""
    limit = limits.max_body_bytes
    too_big = ApiError(
        f"the request body is larger than {limit} bytes; send a shorter prompt.",
        status=413,
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
    except TimeoutError:
        raise ApiError(
            f"the request body did not arrive within {limits.body_seconds:g} s; send it at once.",
            status=408,
            code="request_timeout",
        ) from None
    try:
        value = json.loads(body)
    except RecursionError:
        value = None
        depth = limits.max_json_depth + 1
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            "the request body is not valid JSON; send a JSON object.", code="invalid_json"
        ) from None
    else:
        depth = json_depth(value, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise ApiError(
            f"the request body nests arrays and objects deeper than {limits.max_json_depth} "
            "levels; send a flatter body.",
            code="invalid_json",
        )
    return value


def json_depth(value: Any, stop: int) -> int:
    """How deep arrays and objects nest in a decoded JSON value (a scalar is 0), counted
    without recursion; counting ends once it passes `stop`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if deepest > stop:
                return deepest
            stack.extend((child, level + 1) for child in item if isinstance(child, list | dict))
    return deepest


def _handle_error(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        # busy (429) and out of memory or too slow (503) are worth a retry: say when, as
        # OpenAI's clients read it
        retry = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(exc.envelope(), status_code=exc.status, headers=retry)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            message = "this URL does not exist; the API lives under /v1 (see GET /v1/models)."
        elif exc.status_code == 405:
            message = "this method is not allowed on this URL; check the API reference."
        else:
            message = f"{exc.detail}."
        body = error_body(message, "invalid_request_error")
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        return JSONResponse(error_body("the request is not valid.", "invalid_request_error"), 400)
    body = error_body(f"the server failed ({type(exc).__name__}).", "server_error")
    return JSONResponse(body, status_code=500)


def check_api_key(api_key: str | None) -> None:
    """Refuse a key that would turn auth off ("") or lock everyone out (" ", "a b")."""
    if api_key is None:
        return
    if not api_key.strip() or any(c.isspace() for c in api_key):
        raise ServeError(
            "the API key is empty or contains whitespace; pass a key without spaces with "
            "--api-key (or LMFORGE_API_KEY), or leave both unset to serve without a key."
        )


def create_app(
    engine: Engine,
    served: Served,
    api_key: str | None = None,
    admission: Admission | None = None,
) -> FastAPI:
    """The FastAPI app over a (not yet started) engine; the app's lifespan runs the engine.

    Requests are admitted by `admission` (requests in flight, KV memory; default: only the
    request count of `served.limits`), and tokenized and templated on worker threads, never on
    the event loop, so /health answers while they run."""
    check_api_key(api_key)
    limits = served.limits
    if admission is None:
        admission = Admission(limits.max_requests, limits.kv_bytes or 2**62, 0, 0)
    planner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lmforge-plan")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            planner.shutdown(wait=False, cancel_futures=True)
            engine.stop()
            close = getattr(served.tokenizer, "close", None)
            if close is not None:
                close()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.served, app.state.admission = engine, served, admission
    for exc_type in (ApiError, HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_type, _handle_error)
    if api_key:
        app.add_middleware(_AuthGuard, api_key=api_key)

    def card() -> dict[str, Any]:
        return {
            "id": served.name,
            "object": "model",
            "created": served.created,
            "owned_by": "lmforge",
            "context_length": served.context,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": served.name,
            "max_batch": engine.max_batch,
            "dtype": served.dtype,
            "decode_step": engine.batcher.decoding,
            **engine.load(),
            **engine.stats,
            **engine.lane_load(),
            **admission.snapshot(),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != served.name:
            raise ApiError(
                f"the model '{model_id}' does not exist; this server serves '{served.name}'.",
                status=404,
                param="model",
                code="model_not_found",
            )
        return card()

    async def prepare(plan: Callable[[Any, Served], Job], body: Any) -> Job:
        """Check, template and tokenize on a worker thread, within `plan_seconds`."""
        future = asyncio.get_running_loop().run_in_executor(planner, plan, body, served)
        try:
            return await asyncio.wait_for(future, limits.plan_seconds)
        except ApiError:
            raise
        except LmforgeError as exc:  # a check below the protocol layer (tokenizer, config)
            raise ApiError(str(exc), code="invalid_value") from None
        except TimeoutError:
            raise ApiError(
                f"preparing the prompt took longer than {limits.plan_seconds:g} s; send a "
                "shorter prompt or retry when the server is less busy.",
                status=503,
                type="server_error",
                code="prompt_timeout",
            ) from None

    async def generate(request: Request, plan: Callable[[Any, Served], Job], kind: Kind):
        admission.enter()
        held = _Held(admission)
        try:
            body = await read_json(request, limits)
            job = await prepare(plan, body)
            span = max(len(p) for p in job.prompts) + job.gen.max_new_tokens
            rows = len(job.prompts) * max(job.n, job.gen.num_beams)  # a beam is a cache row
            held.reservation = admission.reserve(rows, span)
            answer = Answer(kind, job, served)
            ticket = engine.submit(job)
            answer.timings = ticket.timings  # filled in by the engine when the job finishes
        except BaseException:
            held.release()
            raise
        if job.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                _events(ticket, answer, held),
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(_end, ticket, held),  # also if it never started
            )
        try:
            if not await _collect(ticket, answer, request):
                return Response(status_code=499)  # the client is gone; nobody reads this
        finally:
            held.release()
        return JSONResponse(answer.body())

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, plan_completion, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, plan_chat, "chat")

    return app


class _Held:
    """A request's place in the admission ledgers, given back once."""

    def __init__(self, admission: Admission) -> None:
        self.admission, self.reservation = admission, None
        self._open = True

    reservation: Reservation | None

    def release(self) -> None:
        if self._open:
            self._open = False
            self.admission.leave()
        if self.reservation is not None:
            self.reservation.release()


def _end(ticket: Ticket, held: _Held) -> None:
    ticket.cancel()
    held.release()


async def _collect(ticket: Ticket, answer: Answer, request: Request) -> bool:
    """Feed events to the answer until every choice finished; False if the client left."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while not answer.finished:
            get = asyncio.ensure_future(ticket.queue.get())
            await asyncio.wait((get, gone), return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return False
            item = get.result()
            if isinstance(item, EngineFailure):
                raise ApiError(item.message, status=item.status, code=item.code, type=item.type)
            answer.feed(item)
        return True
    finally:
        gone.cancel()
        if answer.finished:
            ticket.done = True
        else:
            ticket.cancel()


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up (the body is already read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(ticket: Ticket, answer: Answer, held: _Held) -> AsyncIterator[str]:
    """Server-sent events; a client that disconnects cancels this generator, freeing its rows."""
    try:
        for chunk in answer.opening():
            yield sse(chunk)
        while not answer.finished:
            item = await ticket.queue.get()
            if isinstance(item, EngineFailure):
                yield sse(error_body(item.message, item.type, code=item.code))
                return
            for chunk in answer.feed(item):
                yield sse(chunk)
        if answer.job.include_usage:
            yield sse(answer.usage_chunk())
        yield sse("[DONE]")
    finally:
        held.release()
        if answer.finished:
            ticket.done = True
        else:
            ticket.cancel()
