"""The server's lanes beside the continuous batch: beam search (`num_beams`) equal to the Python
API, and speculative decoding with `--draft` (greedy text equal to the server without a draft,
streamed per round, the draft's acceptance in `usage.speculative` and the log); bad beam values
are one-sentence 400s; a lane request that fails fails alone; lane and batch requests at once
all answer what they would alone."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from serve_helpers import API_KEY, CONTEXT, MODEL, health, prompt_ids, reference_texts, tiny_model
from test_serve_errors import check_envelope

from lmforge.errors import CheckpointError, GenerationError
from lmforge.generate import GenerationConfig, generate, generate_outputs
from lmforge.models import save_model
from lmforge.serve import BackgroundServer, Limits, build_app
from lmforge.tokenizer import Tokenizer, chat_stops, encode_chat, train_tokenizer

PROMPTS = ["The quick", "brown fox", "Line 7: the lazy", "你好", "jumps over the dog"]
CHAT = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def other_draft(model_dir, tmp_path_factory):
    """A different random model (one layer) with the target's tokenizer: drafts get rejected."""
    out = tmp_path_factory.mktemp("draft") / "other"
    tok = Tokenizer.load(model_dir)
    tok.save(out)
    save_model(tiny_model(tok, 1, n_layer=1), out)
    return out


def _serve(model_dir, **kw):
    app = build_app(model_dir, api_key=API_KEY, max_batch=8, device="cpu", **kw)
    running = BackgroundServer(app).start()
    running.engine = app.state.engine
    return running


@pytest.fixture(scope="module")
def spec(model_dir, other_draft):
    """The served model with a draft that disagrees with it (rejections every round)."""
    running = _serve(model_dir, draft=other_draft, draft_k=3)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def twin(model_dir):
    """The served model drafting for itself: under greedy decoding every draft is accepted."""
    running = _serve(model_dir, draft=model_dir, draft_k=4)
    yield running
    running.stop()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def _aclient(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


async def _held_by_the_lane(server, call) -> asyncio.Future:
    """Send `call` and return its future once the speculative lane holds it (or it answered,
    or 10 s passed)."""
    sent = asyncio.ensure_future(call)
    deadline = time.monotonic() + 10.0
    while not sent.done() and time.monotonic() < deadline:
        if (await asyncio.to_thread(health, server.url))["speculative_lane"]["requests"]:
            break
        await asyncio.sleep(0.01)
    return sent


def _idle(server, timeout: float = 10.0) -> dict:
    """/health once every lane is empty again."""
    deadline = time.monotonic() + timeout
    while True:
        status = health(server.url)
        lanes = [v for k, v in status.items() if k.endswith("_lane")]
        if all(lane["requests"] == 0 for lane in lanes) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


# ---------------------------------------------------------------- speculative decoding


def test_greedy_with_a_draft_equals_greedy_without(spec, client, reference):
    drafted = _client(spec)
    for text, n, stop in [("The quick", 1, None), ("Line 7: the lazy", 2, None), ("x", 1, "e")]:
        kwargs = dict(model=MODEL, prompt=text, max_tokens=20, temperature=0, n=n, stop=stop)
        with_draft = drafted.completions.create(**kwargs)
        without = client.completions.create(**kwargs)
        assert "speculative" in with_draft.usage.model_dump()  # it ran in the lane
        assert "speculative" not in without.usage.model_dump()
        ids = prompt_ids(reference[1], text)
        gen = GenerationConfig(max_new_tokens=20, temperature=0, stop=[stop] if stop else [])
        expected = reference_texts(reference, ids, gen)[0]
        assert [c.text for c in with_draft.choices] == [c.text for c in without.choices]
        assert [c.text for c in with_draft.choices] == [expected] * n
        assert [c.finish_reason for c in with_draft.choices] == [
            c.finish_reason for c in without.choices
        ]
        assert with_draft.usage.completion_tokens == without.usage.completion_tokens
    chat = dict(model=MODEL, messages=CHAT, max_tokens=15, temperature=0)
    assert (
        drafted.chat.completions.create(**chat).choices[0].message.content
        == client.chat.completions.create(**chat).choices[0].message.content
    )


def test_streaming_with_a_draft_sends_each_rounds_accepted_tokens(twin, spec, reference):
    model, tok = reference
    ids = prompt_ids(tok, "The quick")
    expected = reference_texts(reference, ids, GenerationConfig(max_new_tokens=24, temperature=0))
    for server in (twin, spec):
        chunks = list(
            _client(server).completions.create(
                model=MODEL,
                prompt="The quick",
                max_tokens=24,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        texts = [c.choices[0].text for c in chunks if c.choices]
        assert "".join(texts) == expected[0]
        assert chunks[-2].choices[0].finish_reason == "length"
        usage = chunks[-1].usage.model_dump()
        assert usage["completion_tokens"] == 24 and "speculative" in usage
        if server is twin:  # k = 4 and every draft accepted: 5 tokens a round, about 5 chunks
            assert len(texts) <= 24 // 5 + 2
    chat = list(
        _client(twin).chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=12, temperature=0, stream=True
        )
    )
    assert chat[0].choices[0].delta.role == "assistant"
    prompt = encode_chat(tok, CHAT)
    gen = GenerationConfig(max_new_tokens=12, temperature=0, stop=chat_stops(tok))
    streamed = "".join(c.choices[0].delta.content or "" for c in chat)
    assert streamed == reference_texts(reference, prompt, gen)[0]


def test_acceptance_is_reported_in_usage_and_the_log(twin, spec, caplog):
    caplog.set_level(logging.INFO, logger="lmforge.serve")
    kwargs = dict(model=MODEL, prompt="brown fox", max_tokens=30, temperature=0)
    same = _client(twin).completions.create(**kwargs).usage.model_dump()["speculative"]
    assert same["draft_tokens"] > 0 and same["accepted_tokens"] == same["draft_tokens"]
    assert same["acceptance_rate"] == 1.0  # a draft equal to the model is always right
    other = _client(spec).completions.create(**kwargs).usage.model_dump()["speculative"]
    assert 0 <= other["accepted_tokens"] <= other["draft_tokens"]
    assert other["draft_tokens"] > 0
    assert other["acceptance_rate"] == round(other["accepted_tokens"] / other["draft_tokens"], 4)
    assert other["accepted_tokens"] < other["draft_tokens"]  # it rejects: that path is tested
    lines = [
        r.getMessage() for r in caplog.records if "request done (speculative)" in r.getMessage()
    ]
    assert any("draft acceptance 100.0%" in line for line in lines)
    # unseeded sampling runs in the lane too; what the loop does not support joins the batch
    sampled = _client(spec).completions.create(**{**kwargs, "temperature": 0.8})
    assert "speculative" in sampled.usage.model_dump()
    for extra in (dict(repetition_penalty=1.3), dict(logprobs=2), dict(temperature=0.8, seed=5)):
        r = _client(spec).completions.create(**kwargs, extra_body=extra)
        assert "speculative" not in r.usage.model_dump(), extra
    assert health(spec.url)["speculative_lane"]["completed"] >= 3


def test_the_lane_leaves_requests_to_a_busy_batch(spec, monkeypatch):
    """While the continuous batch holds rows, a request the lane supports joins the batch
    (under load the batch's throughput is worth more than one request's latency)."""
    _idle(spec)
    kwargs = dict(model=MODEL, prompt="brown fox", max_tokens=8, temperature=0)
    engine = spec.engine
    monkeypatch.setitem(engine._owner, -1, None)  # a row of the batch that never ends
    busy = _client(spec).completions.create(**kwargs)
    assert "speculative" not in busy.usage.model_dump()
    monkeypatch.delitem(engine._owner, -1)
    idle = _client(spec).completions.create(**kwargs)
    assert "speculative" in idle.usage.model_dump()
    assert busy.choices[0].text == idle.choices[0].text


def test_sampling_in_the_lane_applies_the_sampling_settings(spec, reference):
    """top_k = 1 sampling is greedy whatever the random numbers: the lane must agree (that its
    samples follow the model's distribution is `tests/generate/test_gen_speculative.py`'s)."""
    ids = prompt_ids(reference[1], "Line 3: the quick")
    expected = reference_texts(reference, ids, GenerationConfig(max_new_tokens=16, temperature=0))
    r = _client(spec).completions.create(
        model=MODEL,
        prompt="Line 3: the quick",
        max_tokens=16,
        temperature=1.0,
        extra_body={"top_k": 1},
    )
    assert "speculative" in r.usage.model_dump()
    assert r.choices[0].text == expected[0]


def test_a_bad_draft_is_refused_with_one_sentence(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not a model dir"):
        build_app(model_dir, device="cpu", draft=tmp_path)
    other = tmp_path / "other-tokenizer"
    tok = train_tokenizer([f"entirely different words {i} zebra" for i in range(40)], 280)
    tok.save(other)
    save_model(tiny_model(tok, 2), other)
    with pytest.raises(GenerationError, match="different tokenizer"):
        build_app(model_dir, device="cpu", draft=other)


# ---------------------------------------------------------------- beam search


def test_beams_equal_the_python_api(client, reference):
    model, tok = reference
    ids = prompt_ids(tok, "The quick")
    gen = GenerationConfig(max_new_tokens=10, num_beams=4, num_return_sequences=2)
    r = client.completions.create(
        model=MODEL, prompt="The quick", max_tokens=10, n=2, extra_body={"num_beams": 4}
    )
    assert [c.text for c in r.choices] == reference_texts(reference, ids, gen)
    assert r.usage.completion_tokens == sum(len(t) for t in generate(model, [ids], gen))
    # length_penalty and early_stopping reach the search; vLLM's use_beam_search + best_of too
    scored = GenerationConfig(
        max_new_tokens=10, num_beams=3, length_penalty=0.3, early_stopping=True
    )
    r = client.completions.create(
        model=MODEL,
        prompt="The quick",
        max_tokens=10,
        best_of=3,
        extra_body={"use_beam_search": True, "length_penalty": 0.3, "early_stopping": True},
    )
    assert r.choices[0].text == reference_texts(reference, ids, scored)[0]
    # chat, with its template's stop strings: the best beam cut as generate_outputs cuts it
    prompt = encode_chat(tok, CHAT)
    gen = GenerationConfig(max_new_tokens=12, num_beams=3, stop=chat_stops(tok))
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, extra_body={"num_beams": 3}
    )
    assert r.choices[0].message.content == generate_outputs(model, [prompt], gen, tok)[0].text


def test_beams_with_a_stop_string_end_at_it(client, reference):
    model, tok = reference
    ids = prompt_ids(tok, "The quick")
    free = GenerationConfig(max_new_tokens=20, num_beams=3)
    text = reference_texts(reference, ids, free)[0]
    stop = "ku"
    assert text.index(stop) > 0  # the best beam runs into it midway
    r = client.completions.create(
        model=MODEL, prompt="The quick", max_tokens=20, stop=stop, extra_body={"num_beams": 3}
    )
    cut = generate_outputs(model, [ids], GenerationConfig(**{**free.__dict__, "stop": [stop]}), tok)
    assert r.choices[0].text == cut[0].text == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_streamed_beams_arrive_as_one_chunk_per_choice(client, reference):
    ids = prompt_ids(reference[1], "brown fox")
    gen = GenerationConfig(max_new_tokens=8, num_beams=3, num_return_sequences=2)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="brown fox",
            max_tokens=8,
            n=2,
            stream=True,
            extra_body={"num_beams": 3},
        )
    )
    assert len(chunks) == 2
    assert [c.choices[0].text for c in chunks] == reference_texts(reference, ids, gen)
    assert all(c.choices[0].finish_reason == "length" for c in chunks)


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        (dict(num_beams=0), "num_beams", "integer_below_min_value"),
        (dict(num_beams=17), "num_beams", "integer_above_max_value"),
        (dict(num_beams=2, n=3), "n", "invalid_value"),
        (dict(use_beam_search=True), "num_beams", "invalid_value"),
        (dict(use_beam_search=False, num_beams=3), "use_beam_search", "invalid_value"),
        (dict(length_penalty=0.5), "length_penalty", "invalid_value"),
        (dict(early_stopping=True), "early_stopping", "invalid_value"),
        (dict(num_beams=3, temperature=0.7), "temperature", "invalid_value"),
        (dict(num_beams=3, top_p=0.5), "top_p", "invalid_value"),
        (dict(num_beams=3, top_k=5), "top_k", "invalid_value"),
        (dict(num_beams=3, logprobs=1), "logprobs", "unsupported_parameter"),
    ],
)
def test_bad_beam_values_are_400_with_one_sentence(client, change, param, code):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body=change)
    check_envelope(info.value, 400, param, code)  # one sentence, in OpenAI's envelope


def test_beam_rows_count_against_the_kv_budget(model_dir):
    """A beam is a cache row: 8 beams may not fit where one sequence does (400, not a crash)."""
    app = build_app(model_dir, device="cpu", limits=Limits(kv_bytes=200_000))
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        client.completions.create(model=MODEL, prompt="hi", max_tokens=40)
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(
                model=MODEL, prompt="hi", max_tokens=40, extra_body={"num_beams": 8}
            )
        check_envelope(info.value, 400, "max_tokens", "kv_cache_exceeded")


# ---------------------------------------------------------------- lanes and the batch together


def test_lane_and_batch_requests_at_once_all_answer_as_alone(spec, reference, monkeypatch):
    """The first greedy request takes the free lane; the rest arrive while it decodes there
    (the draft is slowed so that they do) and go to the batch or the beam lane."""
    model, tok = reference
    draft = spec.engine.speculative_lane.draft
    step = draft.decode_step

    def slowed(*args, **kwargs):
        time.sleep(0.02)
        return step(*args, **kwargs)

    monkeypatch.setattr(draft, "decode_step", slowed)
    _idle(spec)
    asks = [
        dict(prompt=p, max_tokens=m, temperature=0)
        for p, m in zip(PROMPTS, [18, 9, 24, 12, 6], strict=True)
    ]
    asks.append(dict(prompt="The quick", max_tokens=10, temperature=0, repetition_penalty=1.5))
    asks.append(dict(prompt="brown fox", max_tokens=9, n=2, num_beams=3))
    asks.append(dict(prompt="the lazy dog", max_tokens=7, num_beams=2))

    async def fire():
        client = _aclient(spec)
        calls = []
        for ask in asks:
            core = {
                k: v for k, v in ask.items() if k in ("prompt", "max_tokens", "n", "temperature")
            }
            extra = {k: v for k, v in ask.items() if k not in core}
            calls.append(client.completions.create(model=MODEL, **core, extra_body=extra))
        first = await _held_by_the_lane(spec, calls[0])  # then send the others
        return await asyncio.gather(first, *calls[1:])

    results = asyncio.run(fire())
    lanes = []
    for ask, r in zip(asks, results, strict=True):
        ids = prompt_ids(tok, ask["prompt"])
        gen = GenerationConfig(
            max_new_tokens=ask["max_tokens"],
            temperature=0,
            num_beams=ask.get("num_beams", 1),
            num_return_sequences=ask.get("n", 1),
            repetition_penalty=ask.get("repetition_penalty", 1.0),
        )
        assert [c.text for c in r.choices] == reference_texts(reference, ids, gen), ask
        lanes.append("speculative" in r.usage.model_dump())
    assert sum(lanes) >= 1  # the lane took a greedy request while it was free
    status = _idle(spec)
    assert status["beam_lane"]["requests"] == 0 and status["active_rows"] == 0


def test_a_failing_lane_request_fails_alone(spec, reference, monkeypatch):
    """The draft raising fails the speculative request (500) while the batch's requests answer;
    an allocation failure in beam search is a 503; both lanes serve again afterwards."""
    draft = spec.engine.speculative_lane.draft
    step = draft.decode_step
    others_answered = threading.Event()

    def broken(*args, **kwargs):
        others_answered.wait(30)  # the lane stays busy until the other requests have answered
        raise RuntimeError("draft broke (simulated)")

    monkeypatch.setattr(draft, "decode_step", broken)
    _idle(spec)

    async def fire():
        client = _aclient(spec)
        calls = [
            client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0)
            for p in PROMPTS
        ]
        first = await _held_by_the_lane(spec, calls[0])
        others = await asyncio.gather(*calls[1:], return_exceptions=True)
        others_answered.set()
        return [*await asyncio.gather(first, return_exceptions=True), *others]

    results = asyncio.run(fire())
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) == 1 and isinstance(failed[0], openai.InternalServerError)
    assert "draft broke" in str(failed[0]) and failed[0].body["code"] is None
    for text, r in zip(PROMPTS, results, strict=True):
        if not isinstance(r, Exception):
            ids = prompt_ids(reference[1], text)
            gen = GenerationConfig(max_new_tokens=8, temperature=0)
            assert r.choices[0].text == reference_texts(reference, ids, gen)[0]
    monkeypatch.setattr(draft, "decode_step", step)

    beam = spec.engine.beam_lane
    search = beam.model.step

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(beam.model, "step", no_memory)
    client = _client(spec)
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(
            model=MODEL, prompt="hi", max_tokens=5, extra_body={"num_beams": 2}
        )
    assert info.value.status_code == 503 and info.value.body["code"] == "out_of_memory"
    assert health(spec.url)["status"] == "ok" and time.perf_counter() - started < 30
    monkeypatch.setattr(beam.model, "step", search)
    ok = client.completions.create(
        model=MODEL, prompt="hi", max_tokens=5, extra_body={"num_beams": 2}
    )
    assert ok.choices[0].finish_reason == "length"
    again = client.completions.create(model=MODEL, prompt="hi", max_tokens=5, temperature=0)
    assert "speculative" in again.usage.model_dump()


def test_a_client_that_leaves_frees_the_lane(spec):
    stream = _client(spec).completions.create(
        model=MODEL, prompt="The", max_tokens=CONTEXT - 8, temperature=0, stream=True
    )
    next(iter(stream))
    stream.close()
    status = _idle(spec)
    assert status["speculative_lane"]["requests"] == 0
    assert status["speculative_lane"]["cancelled"] >= 1


def test_lane_requests_count_against_the_request_limit(model_dir, monkeypatch):
    """A beam request in flight holds its place: with max_requests = 1 the next is a 429."""
    app = build_app(model_dir, device="cpu", limits=Limits(max_requests=1))
    model = app.state.engine.beam_lane.model
    step = model.step

    def slow(*args, **kwargs):
        time.sleep(0.1)
        return step(*args, **kwargs)

    monkeypatch.setattr(model, "step", slow)
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        beams = dict(model=MODEL, prompt="hi", max_tokens=20, extra_body={"num_beams": 2})
        first = ThreadPoolExecutor(1).submit(client.completions.create, **beams)
        deadline = time.monotonic() + 10
        while health(server.url)["beam_lane"]["requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert info.value.response.headers["retry-after"] == "1"
        assert first.result(timeout=30).choices[0].finish_reason == "length"
        assert health(server.url)["requests_in_flight"] == 0


def test_a_lane_is_free_and_counted_before_its_answer_leaves():
    """A client that sends its next request on reading an answer finds the lane free: the lane
    frees itself and counts the request before it hands over the last events, not after its
    decode returns."""
    from lmforge.generate.continuous import RowEvent
    from lmforge.serve.lanes import Lane
    from lmforge.serve.protocol import Job

    seen, leave = [], threading.Event()

    class Probe(Lane):
        def decode(self, ticket):
            self.emit(ticket, [(0, RowEvent(row=0, token=5, finish_reason="length"))], True)
            leave.wait(10)  # the decode has not returned yet

    async def ask():
        lane = Probe()
        lane.start()
        job = Job(prompts=[[1, 2]], gen=GenerationConfig(max_new_tokens=1), prompt_texts=["x"])
        ticket = lane.submit(job, asyncio.get_running_loop(), only_if_free=True)
        await asyncio.wait_for(ticket.queue.get(), 10)  # the answer
        seen.append(lane.snapshot())
        seen.append(lane.submit(job, asyncio.get_running_loop(), only_if_free=True) is not None)
        leave.set()
        await asyncio.to_thread(lane.stop)

    asyncio.run(ask())
    assert seen[0] == {"requests": 0, "completed": 1, "cancelled": 0, "failures": 0}
    assert seen[1] is True  # a second request was taken, not turned away as busy
