"""The server through the official openai client: completions, chat, streaming, n > 1, stop
strings, logprobs, and continuous batching equal to `lmforge.generate` run one request alone."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time

import openai
import pytest
import torch
from serve_helpers import API_KEY, CONTEXT, MAX_BATCH, MODEL, prompt_ids, reference_texts
from serve_helpers import health as _health

from lmforge.generate import GenerationConfig
from lmforge.serve import BackgroundServer, build_app
from lmforge.tokenizer import chat_stops, encode_chat


def health(server) -> dict:
    return _health(server.url)


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    status = health(server)  # no API key needed
    assert status["status"] == "ok" and status["max_batch"] == MAX_BATCH
    assert status["decode_step"] == "eager" and status["dtype"] == "float32"


def test_a_bfloat16_server_answers_as_generate_on_the_bfloat16_model(model_dir, reference):
    """`--dtype bfloat16`: the batch decodes the bf16 weights (/health says so) and a greedy
    answer is `generate`'s on the same model cast to bf16."""
    model, tok = reference
    bf16 = (copy.deepcopy(model).to(torch.bfloat16), tok)
    app = build_app(model_dir, api_key=API_KEY, device="cpu", dtype="bfloat16")
    with BackgroundServer(app) as running:
        assert _health(running.url)["dtype"] == "bfloat16"
        served = app.state.engine.batcher.model
        assert {p.dtype for p in served.parameters()} == {torch.bfloat16}
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=API_KEY, max_retries=0)
        for text in ("The quick", "你好"):
            r = client.completions.create(model=MODEL, prompt=text, max_tokens=12, temperature=0)
            gen = GenerationConfig(max_new_tokens=12, temperature=0)
            assert r.choices[0].text == reference_texts(bf16, prompt_ids(tok, text), gen)[0]


def test_completion_greedy_equals_generate(client, reference):
    r = client.completions.create(model=MODEL, prompt="The quick", max_tokens=12, temperature=0)
    ids = prompt_ids(reference[1], "The quick")
    gen = GenerationConfig(max_new_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert abs(r.created - time.time()) < 60
    (choice,) = r.choices
    assert choice.text == reference_texts(reference, ids, gen)[0]
    assert choice.finish_reason == "length" and choice.index == 0
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 12)
    assert r.usage.total_tokens == len(ids) + 12
    usage = r.usage.model_dump()  # the speed the server measured for this request
    assert 0 < usage["time_to_first_token_s"] < 60 and usage["tokens_per_second"] > 0


def test_concurrent_requests_are_batched_and_each_equals_generate_alone(
    async_client, reference, server
):
    prompts = ["The quick", "brown fox", "Line 7: the lazy", "你好", "x", "jumps over the dog"]
    lengths = [30, 9, 24, 17, 40, 5]

    async def fire():
        calls = [
            async_client.completions.create(model=MODEL, prompt=p, max_tokens=m, temperature=0)
            for p, m in zip(prompts, lengths, strict=True)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(fire())
    for p, m, r in zip(prompts, lengths, results, strict=True):
        gen = GenerationConfig(max_new_tokens=m, temperature=0)
        assert r.choices[0].text == reference_texts(reference, prompt_ids(reference[1], p), gen)[0]
        assert r.usage.completion_tokens == m
    assert health(server)["peak_active_rows"] >= 2  # they really shared decoding steps


def test_chat_uses_the_template_and_equals_generate(client, reference):
    model, tok = reference
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello to the fox."},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0)
    ids = encode_chat(tok, messages)
    gen = GenerationConfig(max_new_tokens=15, temperature=0, stop=chat_stops(tok))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == reference_texts(reference, ids, gen)[0]
    assert r.usage.prompt_tokens == len(ids)
    assert choice.finish_reason in ("stop", "length")


def test_streamed_completion_joins_to_the_whole_answer(client):
    kwargs = dict(model=MODEL, prompt="The lazy dog", max_tokens=20, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "text_completion" for c in chunks)
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == whole
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20 and not chunks[-1].choices
    assert chunks[-1].usage.model_dump()["tokens_per_second"] > 0


def test_streamed_chat_has_a_role_then_deltas(client):
    kwargs = dict(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10, temperature=0
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason is not None


def test_n_samples_are_seeded_per_request(client, reference):
    kwargs = dict(model=MODEL, prompt="brown", max_tokens=8, temperature=1.0, top_p=0.9, n=3)
    first = client.completions.create(**kwargs, seed=11)
    again = client.completions.create(**kwargs, seed=11)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    gen = GenerationConfig(max_new_tokens=8, top_p=0.9, num_return_sequences=3, seed=11)
    assert texts == reference_texts(reference, prompt_ids(reference[1], "brown"), gen)
    assert first.usage.completion_tokens == 24


def test_n_in_a_stream_interleaves_choices(client):
    chunks = list(
        client.completions.create(model=MODEL, prompt="fox", max_tokens=6, n=2, seed=3, stream=True)
    )
    finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_stop_strings_cut_the_text(client, reference):
    ids = prompt_ids(reference[1], "Line 3: the quick brown")
    free = reference_texts(reference, ids, GenerationConfig(max_new_tokens=30, temperature=0))[0]
    clean = [i for i in range(2, len(free) - 1) if "\ufffd" not in free[i : i + 2]]
    stop = free[clean[len(clean) // 2] : clean[len(clean) // 2] + 2]
    kwargs = dict(model=MODEL, prompt="Line 3: the quick brown", max_tokens=30, temperature=0)
    r = client.completions.create(**kwargs, stop=[stop, "never-there"])
    assert r.choices[0].text == free[: free.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**kwargs, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == free[: free.index(stop)]


def test_completion_logprobs(client, reference):
    model, tok = reference
    r = client.completions.create(
        model=MODEL, prompt="The quick", max_tokens=5, temperature=0, logprobs=4
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert lp.text_offset[0] == 0
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 0 < len(top) <= 4
        assert chosen == pytest.approx(max(top.values()))  # greedy takes the argmax
    with torch.no_grad():
        logp = model(torch.tensor([prompt_ids(tok, "The quick")])).logits[0, -1].log_softmax(-1)
    assert lp.token_logprobs[0] == pytest.approx(float(logp.max()), abs=1e-4)


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_echo_puts_the_prompt_first(client):
    r = client.completions.create(model=MODEL, prompt="The fox", max_tokens=3, echo=True)
    assert r.choices[0].text.startswith("The fox")


def test_token_id_prompts(client, reference):
    ids = prompt_ids(reference[1], "The quick")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(
        model=MODEL, prompt="The quick", max_tokens=6, temperature=0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_a_client_that_disconnects_frees_its_rows(client, server):
    before = health(server)["cancelled_rows"]
    stream = client.completions.create(
        model=MODEL, prompt="The", max_tokens=CONTEXT - 8, n=MAX_BATCH, stream=True
    )
    for _, _ in zip(range(3), stream, strict=False):
        pass
    stream.close()
    deadline = time.monotonic() + 20
    while (status := health(server))["active_rows"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status["active_rows"] == 0
    assert status["cancelled_rows"] - before == MAX_BATCH, status


def test_a_waiting_client_that_gives_up_frees_its_rows(server):
    """Non-streaming: the server notices the closed connection while the rows still decode."""
    before = health(server)["cancelled_rows"]
    body = json.dumps(
        {"model": MODEL, "prompt": "The", "max_tokens": CONTEXT - 8, "n": MAX_BATCH}
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # hang up once its rows decode, unread
            load = health(server)
            if load["active_rows"] + load["waiting_rows"] == MAX_BATCH:
                break
            time.sleep(0.01)
    deadline = time.monotonic() + 20
    while (status := health(server))["cancelled_rows"] == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status["cancelled_rows"] - before == MAX_BATCH
