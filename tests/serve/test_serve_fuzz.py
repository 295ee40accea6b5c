"""Property-based fuzzing of the server's request schema: whatever a client sends (any JSON for
any field, NaN and huge numbers, wrong types, deep nesting, bytes that are not JSON), the answer
is never a 5xx, never a hang, and /health keeps answering."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import MODEL

from lmforge.serve import BackgroundServer, Limits, build_app

EXAMPLES = int(os.environ.get("LMFORGE_FUZZ_EXAMPLES", "200"))  # more for a long run by hand
STATUSES: Counter[int] = Counter()  # what the fuzz run got back, checked at the end

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, 2, -1, 1e-300, 1e300, 0.5])
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=60) | st.sampled_from(["the fox", "你好", "<|bos|>", "\ud800x", ""])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool"])},
        optional={
            "content": texts
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=3)
        },
    ),
    min_size=1,
    max_size=4,
)
SAMPLING = {
    "temperature": st.floats(0, 2) | st.sampled_from([0, 1e-300, 2]),
    "top_p": st.floats(0, 1),
    "n": st.integers(1, 3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "stop": texts.filter(bool) | st.lists(texts.filter(bool), max_size=4),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "seed": st.integers(0, 2**63),
    "user": texts,
    "max_tokens": st.integers(1, 10),
}
COMPLETION = {
    **SAMPLING,
    "prompt": texts.filter(bool)
    | st.lists(texts.filter(bool), min_size=1, max_size=3)
    | st.lists(st.integers(0, 250), min_size=1, max_size=8),
    "logprobs": st.integers(0, 5),
    "echo": st.booleans(),
}
CHAT = {
    **SAMPLING,
    "max_completion_tokens": st.integers(1, 10),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 5),
    "response_format": st.just({"type": "text"}),
}


def requests(required: dict, fields: dict) -> st.SearchStrategy[dict]:
    """A plausible request, then up to two of its fields (any key, present or not) replaced
    by arbitrary JSON: a third of them stay valid and reach the engine."""
    valid = st.fixed_dictionaries(required, optional=fields)
    names = sorted({*required, *fields, "logit_bias", "tools", "suffix", "best_of"})
    broken = st.lists(st.tuples(st.sampled_from(names), json_values), max_size=2)
    return st.tuples(valid, broken).map(lambda vb: {**vb[0], **dict(vb[1])})


completion = requests({"model": st.just(MODEL)}, COMPLETION)
chat = requests({"model": st.just(MODEL), "messages": messages}, CHAT)
deep = st.integers(min_value=30, max_value=3000).map(lambda d: ("[" * d + "]" * d).encode())
bodies = (
    st.tuples(st.just("/v1/completions"), completion.map(lambda b: json.dumps(b).encode()))
    | st.tuples(st.just("/v1/chat/completions"), chat.map(lambda b: json.dumps(b).encode()))
    | st.tuples(
        st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
        st.binary(max_size=200) | deep | json_values.map(lambda v: json.dumps(v).encode()),
    )
)


@pytest.fixture(scope="module")
def fuzz_server(model_dir):
    limits = Limits(max_tokens=10, max_body_bytes=64 * 1024, plan_seconds=20.0)
    app = build_app(model_dir, max_batch=8, device="cpu", limits=limits)
    with BackgroundServer(app) as running:
        yield running


def send(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()  # a stream too: it must end
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="LMFORGE_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=bodies)
def test_no_request_body_gets_a_5xx(fuzz_server, request):
    path, body = request
    status = send(fuzz_server.url + path, body)
    STATUSES[status] += 1
    assert status < 500, (path, body[:300])


def test_health_still_answers_after_the_fuzzing(fuzz_server):
    start = time.perf_counter()
    with urllib.request.urlopen(fuzz_server.url + "/health", timeout=5) as r:
        health = json.loads(r.read())
    assert time.perf_counter() - start < 1.0
    assert health["status"] == "ok" and health["failures"] == 0
    assert health["requests_in_flight"] == 0 and health["kv_reserved_bytes"] == 0
    if STATUSES:  # after the fuzz run: it reached the engine and the checks alike
        print("fuzz statuses:", dict(sorted(STATUSES.items())))
        assert STATUSES[200] > 0 and sum(n for s, n in STATUSES.items() if 400 <= s < 500) > 0
