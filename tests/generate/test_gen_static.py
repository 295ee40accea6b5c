"""The static decode step (whole cache, tensor positions) against the plain step it replaces."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import greedy_reference, tiny

import lmforge.generate.beam as beam
import lmforge.generate.engine as engine
from lmforge.generate import GenerationConfig, generate
from lmforge.generate.core import decode_one_token, prefill
from lmforge.generate.inputs import pad
from lmforge.generate.static import StaticDecoder, static_unsupported

VARIANTS = {
    "gpt": ("gpt-tiny", {}),
    "llama-gqa": ("llama-tiny", {}),
    "sinusoidal": ("gpt-tiny", {"pos": "sinusoidal"}),
    "alibi": ("llama-tiny", {"pos": "alibi"}),
    "relative": ("llama-tiny", {"pos": "relative"}),
    "nopos": ("llama-tiny", {"pos": "none"}),
    "post-norm": ("gpt-tiny", {"norm_placement": "post"}),
    "window": ("llama-tiny", {"sliding_window": 4}),
    "yarn": ("llama-tiny", {"rope_scaling": "yarn", "rope_factor": 2.0}),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 1, 2, 30]]  # left padding in rows 2 and 3


def plain_generate(monkeypatch, model, prompts, gen):
    """generate() forced onto the plain step (growing mask), as for unsupported models."""
    with monkeypatch.context() as m:
        for module in (engine, beam):
            m.setattr(module, "static_unsupported", lambda model, cache=None: "forced")
        return generate(model, prompts, gen)


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_static_logits_match_plain_step_with_left_padding(name, explicit):
    preset, overrides = VARIANTS[name]
    model = tiny(preset, **overrides)
    ids, mask = pad(PROMPTS, 0, torch.device("cpu"))
    steps = 12
    with torch.inference_mode():
        caches = [model.new_cache(len(PROMPTS), ids.size(1) + steps) for _ in range(2)]
        logits = [prefill(model, ids, mask, c) for c in caches]
        static = StaticDecoder(model, caches[1], mask, compile=False)
        static.explicit = explicit  # the attention form compiled steps use
        grown = mask
        for _ in range(steps):
            token = logits[0].argmax(-1)[:, None]
            grown = torch.cat([grown, grown.new_ones(len(PROMPTS), 1)], dim=1)
            logits = [decode_one_token(model, token, grown, caches[0]), static(token)]
            torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
        assert caches[1].length == caches[0].length


@pytest.mark.parametrize("name", ["gpt", "llama-gqa", "alibi", "window"])
def test_generate_static_equals_plain_and_one_at_a_time(monkeypatch, name):
    preset, overrides = VARIANTS[name]
    model = tiny(preset, **overrides)
    assert static_unsupported(model) is None
    gen = GenerationConfig(max_new_tokens=10, temperature=0.0)
    batched = generate(model, PROMPTS, gen)
    assert batched == plain_generate(monkeypatch, model, PROMPTS, gen)
    assert batched == [generate(model, [p], gen)[0] for p in PROMPTS]
    assert batched[0] == greedy_reference(model, PROMPTS[0], 10)


def test_sampling_with_several_sequences_matches_plain(monkeypatch):
    model = tiny("llama-tiny")
    gen = GenerationConfig(
        max_new_tokens=8, temperature=0.9, top_k=20, num_return_sequences=2, seed=3
    )
    assert generate(model, PROMPTS, gen) == plain_generate(monkeypatch, model, PROMPTS, gen)


def test_penalties_match_plain(monkeypatch):
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=8, temperature=0.0, repetition_penalty=1.3)
    assert generate(model, PROMPTS, gen) == plain_generate(monkeypatch, model, PROMPTS, gen)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_beam_search_matches_plain(monkeypatch, preset):
    model = tiny(preset)
    gen = GenerationConfig(max_new_tokens=8, num_beams=3, temperature=0.0)
    assert generate(model, PROMPTS, gen) == plain_generate(monkeypatch, model, PROMPTS, gen)


def test_unsupported_models_are_named_and_still_generate():
    t5 = tiny("t5-tiny")
    assert "arch" in static_unsupported(t5)
    dynamic = tiny("llama-tiny", rope_scaling="dynamic", rope_factor=2.0)
    assert "dynamic" in static_unsupported(dynamic)
    math_backend = tiny("gpt-tiny")
    math_backend.set_attention_backend("math")
    assert "backend" in static_unsupported(math_backend)
    llama = tiny("llama-tiny")
    rolling = llama.new_cache(1, 0, window=8)
    assert "rolling" in static_unsupported(llama, rolling)
    gen = GenerationConfig(max_new_tokens=4, temperature=0.0)
    for model in (dynamic, math_backend):
        assert generate(model, [PROMPTS[0]], gen)[0] == greedy_reference(model, PROMPTS[0], 4)


def test_static_step_refuses_to_overflow_the_cache():
    model = tiny("gpt-tiny")
    ids, mask = pad([[1, 2]], 0, torch.device("cpu"))
    with torch.inference_mode():
        cache = model.new_cache(1, 3)
        logits = prefill(model, ids, mask, cache)
        static = StaticDecoder(model, cache, mask, compile=False)
        static(logits.argmax(-1)[:, None])
        with pytest.raises(Exception, match="cache holds 3"):
            static(logits.argmax(-1)[:, None])


@pytest.mark.slow
def test_compiled_static_step_gives_the_plain_tokens(monkeypatch):
    """torch.compile of the static step (one small graph; tens of seconds on 2 CPU cores)."""
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=6, temperature=0.0)
    expected = plain_generate(monkeypatch, model, PROMPTS, gen)
    assert generate(model, PROMPTS, gen, compile=True) == expected
    # the same shapes again, then longer generations (the cached length is a dynamic size)
    assert generate(model, PROMPTS, gen, compile=True) == expected
    longer = GenerationConfig(max_new_tokens=12, temperature=0.0)
    expected = plain_generate(monkeypatch, model, PROMPTS, longer)
    assert generate(model, PROMPTS, longer, compile=True) == expected
    # another batch size (a second graph of the same step), then the first one again: after its
    # first call a generation runs only the guards that tell the graphs apart
    one = plain_generate(monkeypatch, model, PROMPTS[:1], longer)
    assert generate(model, PROMPTS[:1], longer, compile=True) == one
    assert generate(model, PROMPTS, longer, compile=True) == expected


def test_compile_respects_a_force_eager_stance(monkeypatch):
    """Under the caller's "force_eager" stance nothing is compiled (and guards are not skipped)."""
    model = tiny("gpt-tiny", seed=2)
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0)
    expected = plain_generate(monkeypatch, model, PROMPTS, gen)
    with torch.compiler.set_stance("force_eager"):
        assert generate(model, PROMPTS, gen, compile=True) == expected


@pytest.mark.slow
def test_compiled_step_is_rebuilt_when_weights_change(monkeypatch):
    """A frozen graph holds the weights as constants: after an in-place update (an optimizer
    step) the next compiled generation must see the new weights."""
    model = tiny("gpt-tiny", seed=1)
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0)
    generate(model, PROMPTS, gen, compile=True)
    with torch.no_grad():
        model.heads.lm_head.weight.mul_(-1.0)  # tied to the embedding: both change
    expected = plain_generate(monkeypatch, model, PROMPTS, gen)
    assert generate(model, PROMPTS, gen, compile=True) == expected
