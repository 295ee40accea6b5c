"""`lmforge serve --compile`: the batch's decode step is compiled before the app is returned
(no request waits for it), concurrent requests of different lengths answer what `generate`
answers alone, nothing is compiled while serving, and a failure that empties the batch keeps
the compiled step. Dynamo's eager backend stands in for inductor (the batcher's inductor path
is tested in tests/generate/test_gen_continuous.py)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from serve_helpers import API_KEY, MODEL, health, prompt_ids, reference_texts

from lmforge.generate import GenerationConfig
from lmforge.generate import continuous as continuous_module
from lmforge.generate.static import RegionalStep
from lmforge.serve import BackgroundServer, build_app

TEXTS = ["The quick", "brown fox jumps", "Line 7: the lazy dog", "你好", "over"]
LENGTHS = [9, 3, 14, 6, 11]


@pytest.fixture(scope="module")
def compiled(model_dir):
    import unittest.mock

    import torch
    from torch._dynamo.utils import counters

    def eager_backend(model, compile):
        assert compile is True
        return RegionalStep(model, backend="eager", dynamic_batch=True)

    torch._dynamo.reset()
    counters.clear()
    with unittest.mock.patch.object(continuous_module, "batch_step", eager_backend):
        app = build_app(model_dir, api_key=API_KEY, max_batch=8, device="cpu", compile=True)
    warmed = counters["stats"]["unique_graphs"]
    running = BackgroundServer(app).start()
    running.engine = app.state.engine
    yield running, warmed
    running.stop()


def test_compiled_server_answers_what_generate_does(compiled, reference):
    from torch._dynamo.utils import counters

    running, warmed = compiled
    assert warmed == 2  # compiled while building the app: two rows and more, one row
    assert health(running.url)["decode_step"] == "compiled (regional)"
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=API_KEY, max_retries=0)

    async def one(text, n):
        r = await client.completions.create(model=MODEL, prompt=text, max_tokens=n, temperature=0)
        return r.choices[0].text

    async def every():
        return await asyncio.gather(*(one(t, n) for t, n in zip(TEXTS, LENGTHS, strict=True)))

    texts = asyncio.run(every())
    _, tok = reference
    for text, n, got in zip(TEXTS, LENGTHS, texts, strict=True):
        want = reference_texts(reference, prompt_ids(tok, text), GenerationConfig(n, 0.0))[0]
        assert got == want, text
    assert counters["stats"]["unique_graphs"] == warmed  # nothing compiled while serving
    assert running.engine.stats["peak_active_rows"] >= 2


def test_a_fresh_batcher_keeps_the_compiled_step(compiled):
    running, _ = compiled
    batcher = running.engine.batcher
    step = batcher._step
    running.engine._fail_all("test")  # what a failure of the batcher itself does
    fresh = running.engine.batcher
    assert fresh is not batcher and fresh._step is step and fresh.compile is True and fresh.idle


def test_a_compile_failure_while_serving_is_logged_and_decodes_eagerly(compiled, reference, caplog):
    from lmforge.generate.static import StepCompileError

    class FailingCompile:
        def new_generation(self):
            pass

        def __call__(self, *args, **kwargs):
            raise StepCompileError("compiling the decode step failed (no C++ compiler).")

    running, _ = compiled
    running.engine.batcher._step = FailingCompile()
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=API_KEY, max_retries=0)
    with caplog.at_level("WARNING", logger="lmforge.serve"):
        got = client.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=5, temperature=0)
    _, tok = reference
    want = reference_texts(reference, prompt_ids(tok, TEXTS[0]), GenerationConfig(5, 0.0))[0]
    assert got.choices[0].text == want
    assert running.engine.batcher._step is None
    assert "no C++ compiler" in caplog.text and "decodes eagerly from now on" in caplog.text
    assert health(running.url)["decode_step"] == "eager (compiling failed)"
