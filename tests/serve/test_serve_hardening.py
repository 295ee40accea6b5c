"""A server that hostile requests cannot freeze or exhaust: templates under a budget and off the
event loop, finite numbers only, bounded JSON depth, KV memory admitted before work, one
request's failure kept to itself, header timeouts, a connection limit, an API key that cannot
be empty, and a graceful SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from serve_helpers import API_KEY, MODEL, health, http

from lmforge.errors import ServeError
from lmforge.serve import BackgroundServer, Limits, build_app
from lmforge.serve.app import json_depth

FREEZER = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
CHAT = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def post(url: str, body: dict | bytes, key: str | None = API_KEY) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http(url, raw, key=key)


def closed_by_server(s: socket.socket) -> bool:
    """True when the server closed `s` without a reply (a FIN, or a reset when it closed
    before reading what was sent)."""
    s.settimeout(5)
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True


def timed_health(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        assert r.status == 200
    return time.perf_counter() - start


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("temperature", "NaN"),
        ("top_p", "NaN"),
        ("presence_penalty", "NaN"),
        ("frequency_penalty", "Infinity"),
        ("temperature", "-Infinity"),
        ("max_tokens", "1e400"),
    ],
)
def test_non_finite_numbers_are_400_naming_the_field(server, field, raw):
    body = json.dumps({**CHAT, field: 0}).replace(f'"{field}": 0', f'"{field}": {raw}')
    status, reply = post(server.url + "/v1/chat/completions", body.encode())
    assert status == 400, reply
    assert reply["error"]["param"] == field
    assert server.url and health(server.url)["status"] == "ok"


def test_a_tiny_temperature_decodes_greedily(server):
    near_zero = post(
        server.url + "/v1/completions",
        dict(model=MODEL, prompt="the", temperature=1e-300, max_tokens=4),
    )
    greedy = post(
        server.url + "/v1/completions", dict(model=MODEL, prompt="the", temperature=0, max_tokens=4)
    )
    assert near_zero[0] == greedy[0] == 200
    text = near_zero[1]["choices"][0]["text"]
    assert text and text == greedy[1]["choices"][0]["text"]


def test_deep_json_is_400_not_a_recursion_error(server):
    for depth in (40, 5000, 30_000):  # the test server takes 64 KB bodies
        body = ("[" * depth + "]" * depth).encode()
        status, reply = post(server.url + "/v1/completions", body)
        assert status == 400 and "nests" in reply["error"]["message"], (depth, reply)
    nested = {"model": MODEL, "prompt": "hi", "user": "x", "logit_bias": None}
    assert json_depth(nested, 32) == 1
    assert json_depth({"a": [[{"b": []}]]}, 32) == 5
    assert json_depth(7, 32) == 0


def test_an_empty_or_blank_api_key_is_refused_at_start(model_dir):
    for key in ("", " ", "\t", "two words"):
        with pytest.raises(ServeError, match="API key is empty or contains whitespace"):
            build_app(model_dir, api_key=key, device="cpu")


@pytest.fixture(scope="module")
def hostile(model_dir, tmp_path_factory):
    """The served model with a chat template that never ends, tight limits and a small
    connection limit."""
    copy = tmp_path_factory.mktemp("hostile") / MODEL
    shutil.copytree(model_dir, copy)
    (copy / "chat_template.jinja").write_text(FREEZER)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    limits = Limits(max_tokens=8, max_requests=6, kv_bytes=40_000_000, body_seconds=1.0)
    app = build_app(copy, max_batch=4, device="cpu", limits=limits)
    with BackgroundServer(app, max_connections=40) as running:
        running.app = app
        yield running


def test_a_freezing_template_is_400_while_health_answers(hostile):
    replies: list = []
    workers = [
        threading.Thread(
            target=lambda: replies.append(post(hostile.url + "/v1/chat/completions", CHAT, None))
        )
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    waits = []
    while any(w.is_alive() for w in workers):
        waits.append(timed_health(hostile.url))
        time.sleep(0.05)
    for w in workers:
        w.join()
    assert [status for status, _ in replies] == [400] * 3
    assert all(
        "steps" in r["error"]["message"] or " s to render" in r["error"]["message"]
        for _, r in replies
    )
    assert waits and max(waits) < 1.0, waits


def test_default_max_tokens_is_bounded_by_the_server_limit(hostile):
    body = dict(model=MODEL, prompt="the fox", temperature=0)
    del body["temperature"]
    status, reply = post(hostile.url + "/v1/completions", {**body, "max_tokens": None}, None)
    assert status == 200 and reply["usage"]["completion_tokens"] <= 8
    status, reply = post(hostile.url + "/v1/completions", {**body, "max_tokens": 9}, None)
    assert status == 400 and reply["error"]["code"] == "integer_above_max_value"


def test_kv_memory_is_admitted_before_work(hostile):
    admission = hostile.app.state.admission
    # fill the ledger, then a request that does not fit beside the others is 429
    held = admission.reserve(admission.kv_bytes // admission.cost(1, 16), 16)
    try:
        status, reply = post(
            hostile.url + "/v1/completions", dict(model=MODEL, prompt="the", max_tokens=8), None
        )
        assert status == 429 and reply["error"]["code"] == "kv_cache_full"
    finally:
        held.release()
    status, _ = post(
        hostile.url + "/v1/completions", dict(model=MODEL, prompt="the", max_tokens=8), None
    )
    assert status == 200
    small = Limits(kv_bytes=admission.cost(1, 4))
    from lmforge.serve.admission import Admission

    alone = Admission(4, small.kv_bytes, admission.per_token, admission.per_row)
    with pytest.raises(ServeError, match="KV cache") as info:
        alone.reserve(1, 64)
    assert info.value.status == 400


def test_requests_in_flight_past_the_limit_are_429(hostile):
    admission = hostile.app.state.admission
    for _ in range(admission.max_requests):
        admission.enter()
    try:
        status, reply = post(hostile.url + "/v1/completions", dict(model=MODEL, prompt="x"), None)
        assert status == 429 and reply["error"]["code"] == "server_busy"
        request = urllib.request.Request(
            hostile.url + "/v1/completions",
            json.dumps(dict(model=MODEL, prompt="x")).encode(),
            {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as busy:
            urllib.request.urlopen(request, timeout=10)
        assert busy.value.code == 429 and busy.value.headers["Retry-After"] == "1"
        assert timed_health(hostile.url) < 1.0
    finally:
        for _ in range(admission.max_requests):
            admission.leave()


def test_slow_body_is_408(hostile):
    with socket.create_connection((hostile.host, hostile.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        start = time.perf_counter()
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408") and time.perf_counter() - start < 5


def test_slow_headers_are_cut_and_extra_connections_refused(hostile, monkeypatch):
    """Slowloris: past the connection limit new sockets get 503 at once, until the held ones
    have waited EVICT_AFTER_SECONDS for their headers: then the oldest makes room (/health
    answers), and all are closed after the header timeout."""
    import lmforge.serve.server as server_module

    monkeypatch.setattr(server_module, "HEADER_SECONDS", 4.0)
    monkeypatch.setattr(server_module, "EVICT_AFTER_SECONDS", 1.0)
    start = time.perf_counter()
    socks = []
    try:
        for _ in range(60):  # the limit is 40
            s = socket.create_connection((hostile.host, hostile.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
            socks.append(s)
        refused = [s.recv(4096) for s in socks[45:]]
        assert all(r.startswith(b"HTTP/1.1 503") for r in refused), refused[:2]
        time.sleep(1.2)
        assert timed_health(hostile.url) < 1.0  # the oldest half-open socket made room
        assert closed_by_server(socks[0])
        time.sleep(3.5)
        for s in socks[1:40]:
            assert closed_by_server(s)  # closed by the header timeout, no reply
    finally:
        for s in socks:
            s.close()
    assert time.perf_counter() - start < 20


def test_with_every_slot_in_a_request_one_more_connection_is_503(model_dir):
    app = build_app(model_dir, device="cpu", limits=Limits(body_seconds=60))
    with BackgroundServer(app, max_connections=10) as small:
        busy = []
        try:
            for _ in range(10):  # complete headers, a body that never comes: none evictable
                s = socket.create_connection((small.host, small.port), timeout=10)
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
                busy.append(s)
            time.sleep(0.3)
            with socket.create_connection((small.host, small.port), timeout=10) as extra:
                reply = extra.recv(4096)
            assert reply.startswith(b"HTTP/1.1 503") and b"too_many_connections" in reply
        finally:
            for s in busy:
                s.close()


def read_stream(url: str, body: dict) -> None:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as r:
            r.read()
    except Exception:  # noqa: BLE001
        pass  # the server went away mid-stream: what this test does to it


@pytest.mark.slow
def test_sigterm_stops_the_server_within_5_s_while_requests_run(model_dir):
    from lmforge.serve.server import free_port

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmforge",
            "serve",
            str(model_dir),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--max-tokens",
            "100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health(url)
                break
            except OSError:
                time.sleep(0.2)
        body = dict(model=MODEL, prompt="the", max_tokens=400, stream=True)
        running = [
            threading.Thread(target=read_stream, args=(url + "/v1/completions", body), daemon=True)
            for _ in range(3)
        ]
        for t in running:
            t.start()
        busy = time.monotonic() + 30  # SIGTERM as soon as the requests are being decoded
        while time.monotonic() < busy:
            state = health(url)
            if state["active_rows"] + state["waiting_rows"] > 0:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the streamed requests never reached the engine")
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        assert time.monotonic() - start < 5.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_kv_bytes_per_token_is_what_a_real_cache_holds(reference):
    """The admission formula (2 * n_layer * n_kv_heads * head_dim * dtype bytes per token)
    against the bytes of the engine's own cache."""
    import torch

    from lmforge.serve.admission import kv_bytes_per_token

    model, _ = reference
    cache = model.new_cache(3, 10)
    cfg = model.cfg
    formula = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4
    assert cache.nbytes == 3 * 10 * kv_bytes_per_token(model, torch.float32) == 3 * 10 * formula


def test_offloaded_encoding_gives_the_same_ids(reference):
    from lmforge.serve.offload import OffloadedTokenizer

    _, tok = reference
    text = "the quick brown fox <|bos|> jumps 你好 " * 50
    offloaded = OffloadedTokenizer(tok, threshold=100)
    try:
        assert offloaded.encode(text) == tok.encode(text)  # in the worker process
        assert offloaded.encode("short") == tok.encode("short")  # in place
        assert offloaded.vocab_size == tok.vocab_size
    finally:
        offloaded.close()


def test_a_background_server_holds_its_port_from_the_start(model_dir):
    """The port is bound when the server object is made and handed to uvicorn, so no other
    process can take it between choosing and listening."""
    server = BackgroundServer(build_app(model_dir, device="cpu"))
    with socket.socket() as other, pytest.raises(OSError):
        other.bind((server.host, server.port))
    with server:
        assert health(server.url)["status"] == "ok"
