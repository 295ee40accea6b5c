"""Chunked (memory-linear) attention, rolling KV caches and attention sinks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import GenerationError
from lmforge.longctx.streaming import streaming_perplexity
from lmforge.models import Transformer

attn_mod = importlib.import_module("lmforge.models.attention")  # the module, not the function


def _model(preset="llama-tiny", **kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset(preset, **kw)).eval()


@pytest.mark.parametrize(
    "preset, kw",
    [
        ("llama-tiny", {}),
        ("llama-tiny", {"sliding_window": 5}),
        ("gpt-tiny", {"pos": "alibi"}),
        ("t5-tiny", {}),
        ("bert-tiny", {}),
    ],
)
def test_chunked_backend_equals_sdpa_forward_and_backward(monkeypatch, preset, kw):
    monkeypatch.setattr(attn_mod, "CHUNK", 4)
    model = _model(preset, **kw).train()
    for m in model.modules():
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids = torch.randint(0, 500, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    args = dict(attention_mask=mask)
    if model.cfg.arch == "encoder-decoder":
        args["decoder_input_ids"] = ids[:, :7]
    results = []
    for backend in ("sdpa", "chunked"):
        model.zero_grad()
        model.set_attention_backend(backend)
        out = model(ids, **args).logits
        out.float().pow(2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "preset, kw",
    [("llama-tiny", {"sliding_window": 6}), ("gpt-tiny", {"pos": "alibi", "sliding_window": 6})],
)
def test_rolling_cache_equals_sliding_window_forward(preset, kw):
    model = _model(preset, **kw)
    ids = torch.randint(0, 500, (1, 30))
    full = model(ids).logits
    cache = model.new_cache(1, 0, window=6)
    steps = [model(ids[:, :4], cache=cache).logits]
    for i in range(4, 30):
        steps.append(model(ids[:, i : i + 1], cache=cache).logits)
        assert cache.ks[0].shape[2] == 6 and cache.length <= 5  # bounded by the window
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_attention_sinks_match_the_streamingllm_context():
    # with one layer, cached keys/values depend on their token only, so step n must equal a plain
    # forward over [first `sinks` tokens] + [the window - 1 previous tokens] + [token n] at
    # positions 0..K-1 (StreamingLLM's rule: positions are slots in the cache, not in the text)
    window, sinks = 5, 2
    model = _model(n_layer=1)
    ids = torch.randint(0, 500, (1, 25))
    cache = model.new_cache(1, 0, window=window, sinks=sinks)
    for n in range(25):
        got = model(ids[:, n : n + 1], cache=cache).logits[0, -1]
        kept = list(range(min(sinks, n))) + list(range(max(sinks, n - (window - 1)), n))
        ref = model(ids[:, kept + [n]]).logits[0, -1]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
        assert cache.length <= window + sinks


def test_streaming_perplexity_constant_memory():
    model = _model()
    tokens = np.random.default_rng(0).integers(0, 500, size=400)
    r = streaming_perplexity(model, tokens, window=16, sinks=4, chunk=8, segments=4)
    assert r.tokens == 399 and r.cache_slots == 20 and len(r.ppl_by_segment) == 4
    assert 1 < r.ppl < 2000


def test_rolling_cache_needs_relative_positions_and_no_padding():
    with pytest.raises(GenerationError, match="relative positions"):
        _model("gpt-tiny").new_cache(1, 0, window=4)
    model = _model()
    cache = model.new_cache(2, 0, window=4)
    with pytest.raises(GenerationError, match="padded"):
        model(
            torch.ones(2, 3, dtype=torch.long),
            attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
            cache=cache,
        )
