"""Request bodies of the OpenAI API and their checks, done before any work.

`plan_completion` and `plan_chat` turn a parsed JSON body into a `Job`: the prompts as token
ids and one `GenerationConfig`. Every limit is checked here and reported as an `ApiError` in
OpenAI's terms (status, param, code): n, max_tokens, the context, stop strings, logprobs, the
model name, sampling ranges and parameters this server does not implement. Besides OpenAI's
sampling fields, requests may set `top_k`, `min_p` and `repetition_penalty`, and beam search
with `num_beams` (or vLLM's `use_beam_search`), `length_penalty` and `early_stopping`, as vLLM's
and llama.cpp's servers accept them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lmforge.errors import GenerationError, LmforgeError
from lmforge.generate import GenerationConfig
from lmforge.generate.engine import encode_prompt
from lmforge.serve.errors import ApiError, check_range
from lmforge.tokenizer.chat import chat_stops, encode_chat, render_chat


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and what the server takes on at once.

    Attributes:
        max_tokens: the most tokens one choice may generate; a request without `max_tokens`
            gets min(this, the context left after its prompt).
        max_json_depth: the deepest nesting of arrays and objects a body may have.
        max_requests: generation requests in flight at once (planned, queued or decoding);
            one more is answered 429.
        plan_seconds: the longest the tokenizer and chat template may take for one request.
        body_seconds: the longest a client may take to send its body (408 past it).
        kv_bytes: KV-cache memory the admitted requests may reserve together (None: half the
            memory free when the server starts); a request that cannot fit now is answered
            429, one that could never fit 400.
        max_beams: the widest beam search one request may ask for (`num_beams`).
    """

    max_n: int = 8
    max_beams: int = 16
    max_stop: int = 4
    max_logprobs: int = 20
    max_prompts: int = 16
    max_body_bytes: int = 1 << 20
    max_tokens: int = 4096
    max_json_depth: int = 32
    max_requests: int = 256
    plan_seconds: float = 10.0
    body_seconds: float = 30.0
    kv_bytes: int | None = None


@dataclass
class Served:
    """The model behind the server, as requests see it."""

    name: str
    tokenizer: Any
    context: int  # the longest prompt + completion, in tokens
    vocab_size: int
    created: int
    limits: Limits = field(default_factory=Limits)
    max_token_chars: int | None = None  # the longest BPE vocabulary entry (None: no bound)
    transform: Callable[[str], Any] | None = None  # `--retrieve` / `--kg` (lmforge.knowledge)
    dtype: str = "float32"  # the weights' floating-point type, as /health reports it


@dataclass
class Job:
    """A checked request: what to generate and how to answer."""

    prompts: list[list[int]]
    gen: GenerationConfig
    prompt_texts: list[str]
    logprobs: int | None = None  # top alternatives per token (0: the chosen token only)
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    sources: list[dict[str, Any]] = field(default_factory=list)  # cited by `--retrieve` / `--kg`

    @property
    def n(self) -> int:
        return self.gen.num_return_sequences


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # beyond OpenAI's fields, as vLLM and llama.cpp's server take them
    top_k: int | None = None  # -1 or 0: off
    min_p: float | None = None
    repetition_penalty: float | None = None
    num_beams: int | None = None  # above 1: beam search, in the server's beam lane
    use_beam_search: bool | None = None  # vLLM's switch: beams of num_beams (or best_of)
    length_penalty: float | None = None  # beam score = sum(logprob) / length^this
    early_stopping: bool | None = None  # stop once num_beams hypotheses are finished


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]] = ""
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


_ROLES = ("system", "developer", "user", "assistant", "tool")


def parse(kind: type[_Body], body: Any) -> Any:
    """Validate a decoded JSON body; a wrong type or a missing field is a 400 naming it."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object.", code="invalid_type")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p)) or None
        missing = err["type"] == "missing"
        reason = "is required" if missing else f"is invalid ({err['msg'].lower()})"
        raise ApiError(
            f"'{param}' {reason}; fix the request body.",
            param=param,
            code="missing_required_parameter" if missing else "invalid_type",
        ) from None


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union it tried ('str', 'list[int]') inside error locs."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def check_model(served: Served, name: str) -> None:
    """404 for any model name but the one served."""
    if name != served.name:
        raise ApiError(
            f"the model '{name}' does not exist; this server serves '{served.name}'.",
            status=404,
            param="model",
            code="model_not_found",
        )


def _unsupported(param: str) -> ApiError:
    return ApiError(
        f"'{param}' is not supported by this server; leave it out of the request.",
        param=param,
        code="unsupported_parameter",
    )


def _sampling(
    req: _Sampling, served: Served, best_of: int | None = None
) -> tuple[int, list[str], dict[str, Any]]:
    """Check what completions and chat share; returns (n, stop strings, beam settings)."""
    limits = served.limits
    check_model(served, req.model)
    if req.logit_bias:
        raise _unsupported("logit_bias")
    check_range("n", req.n, 1, limits.max_n)
    check_range("temperature", req.temperature, 0.0, 2.0)
    check_range("top_p", req.top_p, 0.0, 1.0)
    check_range("presence_penalty", req.presence_penalty, -2.0, 2.0)
    check_range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)
    check_range("seed", req.seed, -(2**63), 2**64 - 1)
    if req.top_k not in (None, -1, 0):
        check_range("top_k", req.top_k, 1, None)
    check_range("min_p", req.min_p, 0.0, 1.0)
    check_range("repetition_penalty", req.repetition_penalty)
    if req.repetition_penalty is not None and req.repetition_penalty <= 0:
        raise ApiError(
            f"'repetition_penalty' must be greater than 0 (1 is off), got "
            f"{req.repetition_penalty}.",
            param="repetition_penalty",
            code="number_below_min_value",
        )
    beams = _beams(req, req.n or 1, best_of, limits.max_beams)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop:
        raise ApiError(
            f"'stop' may hold at most {limits.max_stop} strings, got {len(stop)}.",
            param="stop",
            code="array_above_max_length",
        )
    if any(not s for s in stop):
        raise ApiError("every 'stop' string must be non-empty.", param="stop", code="invalid_value")
    return req.n or 1, stop, beams


def _beams(req: _Sampling, n: int, best_of: int | None, most: int) -> dict[str, Any]:
    """The `GenerationConfig` fields of beam search ({} without it). `num_beams` > 1, or
    `use_beam_search` with `num_beams` (or, as vLLM reads it, `best_of`) beams, searches; the
    sampling fields it would ignore and `logprobs` are refused, as is `n` > the beams."""
    check_range("num_beams", req.num_beams, 1, most)
    width = req.num_beams or 1
    if req.use_beam_search:
        width = req.num_beams or best_of or 1
        if width < 2:
            raise ApiError(
                "'use_beam_search' needs a beam width; set 'num_beams' to 2 or more.",
                param="num_beams",
                code="invalid_value",
            )
        check_range("best_of", width, 2, most)
    elif req.use_beam_search is not None and width > 1:
        raise ApiError(
            f"'use_beam_search' is false but 'num_beams' is {width}; drop one of them.",
            param="use_beam_search",
            code="invalid_value",
        )
    if width == 1:
        for param, asked in (
            ("length_penalty", req.length_penalty not in (None, 1.0)),
            ("early_stopping", bool(req.early_stopping)),
        ):
            if asked:
                raise ApiError(
                    f"'{param}' applies to beam search only; set 'num_beams' to 2 or more, or "
                    "drop it.",
                    param=param,
                    code="invalid_value",
                )
        return {}
    if n > width:
        raise ApiError(
            f"'n' is {n} but beam search with {width} beams returns at most {width} sequences; "
            "lower 'n' or raise 'num_beams'.",
            param="n",
            code="invalid_value",
        )
    check_range("length_penalty", req.length_penalty)
    ignored = {
        "temperature": req.temperature not in (None, 0.0),
        "top_p": req.top_p not in (None, 1.0),
        "top_k": req.top_k not in (None, -1, 0),
        "min_p": req.min_p not in (None, 0.0),
    }
    for param in (name for name, asked in ignored.items() if asked):
        raise ApiError(
            f"'{param}' does not apply to beam search, which keeps the most likely beams; "
            "leave it out when 'num_beams' is above 1.",
            param=param,
            code="invalid_value",
        )
    return {
        "num_beams": width,
        "length_penalty": 1.0 if req.length_penalty is None else req.length_penalty,
        "early_stopping": bool(req.early_stopping),
    }


def _no_beam_logprobs(beams: dict[str, Any], asked: bool) -> None:
    """Beam search keeps no per-token logprobs: 400 when a beam request asks for them."""
    if beams and asked:
        raise ApiError(
            "'logprobs' are not available with beam search; drop 'logprobs' or 'num_beams'.",
            param="logprobs",
            code="unsupported_parameter",
        )


def _max_tokens(
    name: str, value: int | None, prompts: list[list[int]], served: Served, prompt_param: str
) -> int:
    """max_tokens in [1, the server's limit], and each prompt + max_tokens within the context
    (400 otherwise); without one, as many as fit, up to the server's limit."""
    check_range(name, value, 1, served.limits.max_tokens)
    longest = max(len(p) for p in prompts)
    room = max(served.context - longest, 1)
    wanted = value if value is not None else min(room, served.limits.max_tokens)
    if longest + wanted > served.context:
        raise ApiError(
            f"this model's context is {served.context} tokens but the request needs "
            f"{longest + wanted} ({longest} in the prompt + {wanted} to generate); shorten the "
            f"prompt or lower {name}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    return wanted


def _config(
    req: _Sampling, n: int, max_tokens: int, stop: list[str], beams: dict[str, Any]
) -> GenerationConfig:
    top_p = 1.0 if req.top_p is None else max(req.top_p, 1e-9)  # top_p = 0 keeps the top token
    return GenerationConfig(
        **beams,
        max_new_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=top_p,
        top_k=req.top_k if req.top_k not in (None, -1, 0) else None,
        min_p=req.min_p or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        num_return_sequences=n,
        stop=stop,
        seed=None if req.seed is None else req.seed % 2**63,
    )


def check_length_bound(served: Served, text: str, param: str) -> None:
    """400 before tokenizing a text that cannot fit: a BPE token covers at most
    `max_token_chars` characters, so len(text) / max_token_chars tokens at least."""
    longest = served.max_token_chars
    if longest and len(text) > served.context * longest:
        raise ApiError(
            f"this model's context is {served.context} tokens but the text holds "
            f"{len(text)} characters, at least {-(-len(text) // longest)} tokens; shorten it.",
            param=param,
            code="context_length_exceeded",
        )


def _text_ids(tokenizer: Any, text: str, served: Served | None = None) -> list[int]:
    """The prompt as the model's tokenizer encodes it, as `lmforge generate` does (a text that
    cannot fit the context is refused before tokenizing)."""
    if served is not None:
        check_length_bound(served, text, "prompt")
    try:
        return encode_prompt(tokenizer, text)
    except GenerationError:
        raise ApiError(
            "the prompt is empty; send some text.", param="prompt", code="invalid_value"
        ) from None


def _completion_prompts(
    req: CompletionRequest, served: Served
) -> tuple[list[list[int]], list[str]]:
    """(token ids, texts) of every prompt: a string, strings, token ids or lists of them."""
    prompt, tok = req.prompt, served.tokenizer
    items: list[Any] = [prompt] if isinstance(prompt, str) else list(prompt)
    if items and all(isinstance(t, int) for t in items):
        items = [items]
    if not items:
        raise ApiError(
            "'prompt' is empty; send text or token ids.", param="prompt", code="invalid_value"
        )
    if len(items) > served.limits.max_prompts:
        raise ApiError(
            f"'prompt' may hold at most {served.limits.max_prompts} prompts, got {len(items)}.",
            param="prompt",
            code="array_above_max_length",
        )
    ids, texts = [], []
    for item in items:
        if isinstance(item, str):
            ids.append(_text_ids(tok, item, served))
            texts.append(item)
            continue
        if not item or any(not 0 <= t < served.vocab_size for t in item):
            raise ApiError(
                f"token prompts must be non-empty lists of ids in [0, {served.vocab_size}).",
                param="prompt",
                code="invalid_value",
            )
        ids.append(list(item))
        texts.append(tok.decode(item))
    return ids, texts


def plan_completion(body: Any, served: Served) -> Job:
    """Check a /v1/completions body and turn it into a Job."""
    req: CompletionRequest = parse(CompletionRequest, body)
    n, stop, beams = _sampling(req, served, req.best_of)
    if req.suffix:
        raise _unsupported("suffix")
    if req.best_of is not None and req.best_of not in (n, beams.get("num_beams")):
        raise _unsupported("best_of")
    _no_beam_logprobs(beams, req.logprobs is not None)
    check_range("logprobs", req.logprobs, 0, served.limits.max_logprobs)
    if req.echo and req.logprobs is not None:
        raise ApiError(
            "'echo' together with 'logprobs' is not supported; drop one of them.",
            param="echo",
            code="unsupported_parameter",
        )
    sources: list[dict[str, Any]] = []
    if isinstance(req.prompt, str):
        prompt, sources = _augment(served, req.prompt)
        req = req.model_copy(update={"prompt": prompt})
    prompts, texts = _completion_prompts(req, served)
    max_tokens = _max_tokens("max_tokens", req.max_tokens, prompts, served, "prompt")
    return Job(
        prompts,
        _config(req, n, max_tokens, stop, beams),
        texts,
        logprobs=req.logprobs,
        echo=bool(req.echo),
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        sources=sources,
    )


def _augment(served: Served, text: str) -> tuple[str, list[dict[str, Any]]]:
    """The server's prompt transform (`--retrieve` / `--kg`) applied to `text`, if it has one:
    (augmented text, sources as JSON objects)."""
    if served.transform is None:
        return text, []
    augmented = served.transform(text)
    sources = [{"index": i, "origin": s.origin, "score": s.score, "text": s.text}
               for i, s in enumerate(augmented.sources, 1)]  # fmt: skip
    return augmented.prompt, sources


def _messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    if not req.messages:
        raise ApiError(
            "'messages' is empty; send at least one message.",
            param="messages",
            code="invalid_value",
        )
    out = []
    for i, m in enumerate(req.messages):
        if m.role not in _ROLES:
            raise ApiError(
                f"messages[{i}].role '{m.role}' is unknown; use one of {', '.join(_ROLES)}.",
                param=f"messages.{i}.role",
                code="invalid_value",
            )
        content = m.content
        if isinstance(content, list):
            if any(part.type != "text" for part in content):
                raise ApiError(
                    f"messages[{i}] has a non-text content part; this server reads text only.",
                    param=f"messages.{i}.content",
                    code="unsupported_parameter",
                )
            content = "".join(part.text or "" for part in content)
        out.append({"role": m.role, "content": content or ""})
    return out


def plan_chat(body: Any, served: Served) -> Job:
    """Check a /v1/chat/completions body and turn it into a Job."""
    req: ChatCompletionRequest = parse(ChatCompletionRequest, body)
    n, stop, beams = _sampling(req, served)
    _no_beam_logprobs(beams, bool(req.logprobs))
    if req.tools:
        raise _unsupported("tools")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise _unsupported("response_format")
    check_range("top_logprobs", req.top_logprobs, 0, served.limits.max_logprobs)
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(
            "'top_logprobs' needs 'logprobs' set to true.",
            param="top_logprobs",
            code="invalid_value",
        )
    messages = _messages(req)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    sources: list[dict[str, Any]] = []
    if users:  # the latest user message is the query
        messages[users[-1]]["content"], sources = _augment(served, messages[users[-1]]["content"])
    try:
        text = render_chat(served.tokenizer, messages)
        check_length_bound(served, text, "messages")
        prompt = encode_chat(served.tokenizer, messages, text)
    except ApiError:
        raise
    except LmforgeError as exc:
        raise ApiError(str(exc), param="messages", code="invalid_value") from None
    name: Literal["max_completion_tokens", "max_tokens"] = (
        "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    )
    value = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = _max_tokens(name, value, [prompt], served, "messages")
    gen = _config(req, n, max_tokens, stop + chat_stops(served.tokenizer), beams)
    return Job(
        [prompt],
        gen,
        [""],
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        sources=sources,
    )
