"""Every limit and error in OpenAI's envelope, checked before any work, and the API key."""

from __future__ import annotations

import json

import openai
import pytest
from serve_helpers import API_KEY, CONTEXT, MODEL, health, http

OK = dict(model=MODEL, prompt="hi", max_tokens=2)
CHAT_OK = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)

COMPLETION_ERRORS = [
    (dict(n=9), 400, "n", "integer_above_max_value"),
    (dict(n=0), 400, "n", "integer_below_min_value"),
    (dict(max_tokens=0), 400, "max_tokens", "integer_below_min_value"),
    (dict(max_tokens=CONTEXT), 400, "prompt", "context_length_exceeded"),
    (dict(prompt="fox " * CONTEXT), 400, "prompt", "context_length_exceeded"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop", "array_above_max_length"),
    (dict(logprobs=21), 400, "logprobs", "integer_above_max_value"),
    (dict(temperature=2.5), 400, "temperature", "number_above_max_value"),
    (dict(top_p=-0.1), 400, "top_p", "number_below_min_value"),
    (dict(model="gpt-4o"), 404, "model", "model_not_found"),
    (dict(echo=True, logprobs=1), 400, "echo", "unsupported_parameter"),
    (dict(prompt=[[1, 2], [10**6]]), 400, "prompt", "invalid_value"),
]

CHAT_ERRORS = [
    (dict(n=9), 400, "n", "integer_above_max_value"),
    (dict(max_tokens=0), 400, "max_tokens", "integer_below_min_value"),
    (dict(max_completion_tokens=CONTEXT), 400, "messages", "context_length_exceeded"),
    (
        dict(messages=[{"role": "user", "content": "fox " * CONTEXT}], max_tokens=None),
        400,
        "messages",
        "context_length_exceeded",
    ),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop", "array_above_max_length"),
    (dict(logprobs=True, top_logprobs=21), 400, "top_logprobs", "integer_above_max_value"),
    (dict(model="nope"), 404, "model", "model_not_found"),
    (dict(messages=[{"role": "wizard", "content": "x"}]), 400, "messages.0.role", "invalid_value"),
]


def check_envelope(exc: openai.APIStatusError, status: int, param, code) -> None:
    assert exc.status_code == status
    error = exc.body if "message" in exc.body else exc.body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"].endswith(".") and error["message"].count(". ") == 0  # one sentence


@pytest.mark.parametrize(("change", "status", "param", "code"), COMPLETION_ERRORS)
def test_completion_limits(client, server, change, status, param, code):
    before = health(server.url)["generated_tokens"]
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**{**OK, **change})
    check_envelope(info.value, status, param, code)
    assert health(server.url)["generated_tokens"] == before  # refused before any work


@pytest.mark.parametrize(("change", "status", "param", "code"), CHAT_ERRORS)
def test_chat_limits(client, change, status, param, code):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**{**CHAT_OK, **change})
    check_envelope(info.value, status, param, code)


def test_openai_error_classes(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**{**OK, "n": 9})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(**{**OK, "model": "nope"})


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model": "tiny-chat", "prompt": ', 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_type"),
        (b'{"model": "tiny-chat", "prompt": "hi", "n": "many"}', 400, "invalid_type"),
        (b'{"prompt": "hi"}', 400, "missing_required_parameter"),
        (json.dumps({**OK, "prompt": "x" * 70_000}).encode(), 413, "request_too_large"),
    ],
)
def test_bodies_that_are_not_requests(server, body, status, code):
    got, answer = http(server.url + "/v1/completions", body)
    assert got == status
    assert answer["error"]["code"] == code
    assert answer["error"]["type"] == "invalid_request_error"


def test_chat_needs_messages(server):
    got, answer = http(server.url + "/v1/chat/completions", json.dumps({"model": MODEL}).encode())
    assert (got, answer["error"]["param"]) == (400, "messages")


def test_unknown_routes_and_methods_use_the_envelope(server):
    got, answer = http(server.url + "/v1/nothing-here", b"{}")
    assert got == 404 and answer["error"]["type"] == "invalid_request_error"
    got, answer = http(server.url + "/v1/completions", method="GET")
    assert got == 405 and "message" in answer["error"]
    got, answer = http(server.url + "/v1/models/other", method="GET")
    assert got == 404 and answer["error"]["code"] == "model_not_found"


def test_api_key_is_required_everywhere_but_health(server):
    for key in (None, "wrong-key"):
        for path, body in (("/v1/models", None), ("/v1/completions", json.dumps(OK).encode())):
            got, answer = http(server.url + path, body, key=key)
            assert got == 401
            assert answer["error"]["code"] == "invalid_api_key"
    assert http(server.url + "/health", key=None)[0] == 200
    assert http(server.url + "/v1/models", key=API_KEY)[0] == 200
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(**OK)


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_model_answers_500_and_the_engine_recovers(client, server, stream):
    def boom():
        raise RuntimeError("CUDA out of memory (simulated)")

    server.engine.batcher.step = boom  # the engine replaces a failed batcher with a fresh one
    with pytest.raises(openai.APIError) as info:
        list(client.completions.create(**OK, stream=True)) if stream else client.completions.create(**OK)  # fmt: skip
    assert "simulated" in str(info.value)
    if not stream:
        assert info.value.status_code == 500 and info.value.type == "server_error"
    assert client.completions.create(**OK).choices[0].finish_reason == "length"
