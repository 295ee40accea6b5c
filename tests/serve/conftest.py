"""A random-initialised gpt-tiny with a small BPE tokenizer in one model dir, served once per
package on a free localhost port; clients are the official `openai` package."""

from __future__ import annotations

import openai
import pytest
import torch
from serve_helpers import API_KEY, MAX_BATCH, MODEL, tiny_model

from lmforge.models import load_model, save_model
from lmforge.serve import BackgroundServer, Limits, build_app
from lmforge.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """A model this small decodes fastest on one thread, and a busy machine hurts less."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def model_dir(tmp_path_factory):
    """Tokenizer trained on a few KB of text + random gpt-tiny (no EOS: lengths are exact)."""
    out = tmp_path_factory.mktemp("served") / MODEL
    lines = [
        f"Line {i}: the quick brown fox jumps over the lazy dog, and then it rests. 你好 {i % 9}."
        for i in range(60)
    ]
    tok = train_tokenizer(lines, vocab_size=300)
    tok.save(out)
    save_model(tiny_model(tok, 0), out)
    return out


@pytest.fixture(scope="package")
def reference(model_dir):
    """The same model and tokenizer, loaded for `lmforge.generate` reference runs."""
    return load_model(model_dir), Tokenizer.load(model_dir)


@pytest.fixture(scope="package")
def server(model_dir):
    limits = Limits(max_body_bytes=64 * 1024)
    app = build_app(model_dir, api_key=API_KEY, max_batch=MAX_BATCH, device="cpu", limits=limits)
    with BackgroundServer(app) as running:
        running.engine = app.state.engine
        yield running


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture()
def async_client(server):
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
