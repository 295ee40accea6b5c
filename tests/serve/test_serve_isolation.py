"""One request's failure never fails the others, through the HTTP server: a model that raises
on one request's token fails exactly that request (500), the concurrent ones answer what
`generate` gives them alone; a broken model fails every request quickly and the server serves
again once it is fixed; a KV cache allocation that fails is 503 for the request that needed it
while /health stays fast."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import openai
import pytest
from serve_helpers import API_KEY, MODEL, health, http, prompt_ids, reference_texts

from lmforge.generate import GenerationConfig, generate
from lmforge.models import KVCache

TEXTS = ["The quick", "brown fox", "Line 7: the lazy", "jumps over the dog", "the lazy dog"]
LENGTHS = [14, 9, 16, 12, 10]
VICTIM = 2


def guard(monkeypatch, model, bad) -> None:
    """The served model's forward (prefill) and decode step raise when `bad(input_ids)`."""
    forward, step = model.forward, model.step

    def guarded_forward(input_ids, *args, **kwargs):
        if bad(input_ids):
            raise RuntimeError("poisoned input (simulated)")
        return forward(input_ids, *args, **kwargs)

    def guarded_step(input_ids, *args, **kwargs):
        if bad(input_ids):
            raise RuntimeError("poisoned input (simulated)")
        return step(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", guarded_forward)
    monkeypatch.setattr(model, "step", guarded_step)


def fire(async_client, *waves: tuple[list, list[int]]) -> list:
    """Each wave's requests at once, the waves one after another; each result is the
    response or the exception it raised."""

    async def go():
        results = []
        for prompts, lengths in waves:
            calls = [
                async_client.completions.create(model=MODEL, prompt=p, max_tokens=m, temperature=0)
                for p, m in zip(prompts, lengths, strict=True)
            ]
            results += await asyncio.gather(*calls, return_exceptions=True)
        return results

    return asyncio.run(go())


def test_a_model_failing_on_one_requests_token_fails_only_that_request(
    async_client, server, reference, monkeypatch
):
    model, tok = reference
    ids = [prompt_ids(tok, t) for t in TEXTS]
    solo = [
        generate(model, [p], GenerationConfig(max_new_tokens=m, temperature=0))[0]
        for p, m in zip(ids, LENGTHS, strict=True)
    ]
    others = {t for i, p in enumerate(ids) if i != VICTIM for t in [*p, *solo[i]]}
    poison = next(t for t in solo[VICTIM][1:] if t not in others and t not in ids[VICTIM])
    guard(monkeypatch, server.engine.batcher.model, lambda x: bool((x == poison).any()))
    results = fire(async_client, (ids, LENGTHS))
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [VICTIM]
    error = results[VICTIM]
    assert isinstance(error, openai.InternalServerError) and error.status_code == 500
    assert "poisoned input" in str(error)
    for i, r in enumerate(results):
        if i != VICTIM:
            gen = GenerationConfig(max_new_tokens=LENGTHS[i], temperature=0)
            assert r.choices[0].text == reference_texts(reference, ids[i], gen)[0], i


def test_a_broken_model_fails_every_request_quickly_and_the_server_recovers(
    async_client, client, server, monkeypatch
):
    guard(monkeypatch, server.engine.batcher.model, lambda x: True)
    start = time.perf_counter()
    results = fire(async_client, (TEXTS, LENGTHS))
    took = time.perf_counter() - start
    assert all(isinstance(r, openai.InternalServerError) for r in results), results
    assert took < 30  # no retry loop: one batched try, then each request once
    monkeypatch.undo()
    ok = client.completions.create(model=MODEL, prompt="the fox", max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason == "length"


def test_a_failing_kv_cache_allocation_is_503_for_its_request_only(
    async_client, server, monkeypatch
):
    model = server.engine.batcher.model
    new_cache = model.new_cache

    def allocate(batch, max_len, *args, **kwargs):
        if max_len > 200:  # only the request asking for 300 tokens starts a cache this wide
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")
        return new_cache(batch, max_len, *args, **kwargs)

    monkeypatch.setattr(model, "new_cache", allocate)
    polls: list[float] = []
    done = threading.Event()

    def poll_health():
        while not done.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
                assert r.status == 200
            polls.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        # the big request comes first, alone in an empty batch: its cache is the one that fails
        big, *results = fire(async_client, (["the fox"], [300]), (TEXTS, LENGTHS))
    finally:
        done.set()
        poller.join()
    assert isinstance(big, openai.APIStatusError) and big.status_code == 503
    assert big.body["code"] == "out_of_memory"
    assert all(not isinstance(r, Exception) for r in results), results
    assert [r.usage.completion_tokens for r in results] == LENGTHS
    assert polls and max(polls) < 1.0


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_allocation_while_others_decode_leaves_them_running(server, monkeypatch, stream):
    """A stream is decoding when a second request's allocation fails: the stream runs to its
    end, the second request is 503 (or, streamed, its error event)."""
    concat = KVCache.concat

    def merge(caches, capacity):
        if sum(c.batch for c in caches) > 1:  # joining the running stream fails
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")
        return concat(caches, capacity)

    monkeypatch.setattr(KVCache, "concat", staticmethod(merge))
    url = server.url + "/v1/completions"
    long = dict(model=MODEL, prompt="the fox", max_tokens=300, stream=True)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    request = urllib.request.Request(url, json.dumps(long).encode(), headers)
    with urllib.request.urlopen(request) as running:
        first = running.readline()  # the stream is decoding
        second = dict(model=MODEL, prompt="fox " * 30, max_tokens=2, n=3, stream=stream)
        if stream:
            req = urllib.request.Request(url, json.dumps(second).encode(), headers)
            with urllib.request.urlopen(req) as other:
                body = other.read().decode()
            assert '"code":"out_of_memory"' in body
        else:
            status, reply = http(url, json.dumps(second).encode())
            assert status == 503 and reply["error"]["code"] == "out_of_memory"
        rest = running.read().decode()
    assert first.startswith(b"data: ")
    assert rest.rstrip().endswith("data: [DONE]") and "error" not in rest
    assert rest.count("data: ") > 100  # the stream ran to its end
    monkeypatch.undo()
    assert http(url, json.dumps({**second, "stream": False}).encode())[0] == 200


def test_a_failing_prompt_fails_its_whole_request_and_frees_its_other_prompts(
    client, server, reference, monkeypatch
):
    tok = reference[1]
    good, bad = prompt_ids(tok, "The quick"), prompt_ids(tok, "brown fox")
    poison = next(t for t in bad if t not in good)
    guard(monkeypatch, server.engine.batcher.model, lambda x: bool((x == poison).any()))
    before = health(server.url)["cancelled_rows"]
    with pytest.raises(openai.InternalServerError, match="poisoned input"):
        client.completions.create(model=MODEL, prompt=[good, bad], max_tokens=200, n=2)
    deadline = time.monotonic() + 10
    while health(server.url)["active_rows"] and time.monotonic() < deadline:
        time.sleep(0.05)
    status = health(server.url)
    assert status["active_rows"] == 0 and status["cancelled_rows"] == before + 2
    monkeypatch.undo()
    ok = client.completions.create(model=MODEL, prompt=[good, bad], max_tokens=3)
    assert [c.finish_reason for c in ok.choices] == ["length", "length"]
