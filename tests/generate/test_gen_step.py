"""The model's one decode step (`Transformer.decode_step`) against the full forward without a
cache, for every kind of model the generation loops serve, with left padding."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import greedy_reference, seq2seq_reference, tiny

from lmforge.generate import GenerationConfig, generate
from lmforge.generate.core import prefill
from lmforge.generate.inputs import decoder_start_id, pad
from lmforge.peft import apply_prefix_tuning, apply_prompt_tuning

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
    "dynamic-rope": ("llama-tiny", {"rope_scaling": "dynamic", "rope_factor": 2.0}),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 1, 2, 30]]  # left padding in rows 2 and 3


def full_forward_logits(model, rows: list[list[int]]) -> torch.Tensor:
    """(B, V) next-token logits of each row from a cache-free forward over the row alone."""
    return torch.stack([model(torch.tensor([r])).logits[0, -1].float() for r in rows])


def check_steps(model, prompts, steps=10, backend=None):
    """Prefill + `steps` decode steps, each compared with the full forward of every row."""
    if backend is not None:
        model.set_attention_backend(backend)
    ids, mask = pad(prompts, 0, torch.device("cpu"))
    rows = [list(p) for p in prompts]
    with torch.inference_mode():
        cache = model.new_cache(len(prompts), ids.size(1) + steps)
        logits = prefill(model, ids, mask, cache)
        for _ in range(steps):
            torch.testing.assert_close(
                logits, full_forward_logits(model, rows), rtol=1e-4, atol=1e-4
            )
            token = logits.argmax(-1)
            for r, t in zip(rows, token.tolist(), strict=True):
                r.append(t)
            logits = model.decode_step(token[:, None], cache)
        assert cache.length == cache.max_len  # prompt (+ soft prompt) + steps


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step_matches_full_forward_with_left_padding(name):
    preset, overrides = VARIANTS[name]
    check_steps(tiny(preset, **overrides), PROMPTS)


@pytest.mark.parametrize("backend", ["math", "chunked"])
def test_step_with_other_attention_backends(backend):
    check_steps(tiny("llama-tiny"), PROMPTS, backend=backend)


def test_step_with_soft_prompt_and_prefix():
    model = apply_prompt_tuning(tiny("llama-tiny"), 3)
    check_steps(model.eval(), PROMPTS, steps=6)
    model = apply_prefix_tuning(tiny("gpt-tiny", pos="learned"), 2)
    check_steps(model.eval(), PROMPTS, steps=6)


def test_layers_of_different_shapes():
    """A pruned model: layer 0 keeps one key/value head, layer 1 two; the cache follows."""
    model = tiny("llama-tiny")
    attn = model.decoder.layers[0].attn
    d = model.cfg.d_model
    attn.n_kv_head = 1
    attn.k_proj = torch.nn.Linear(d, attn.head_dim, bias=False)
    attn.v_proj = torch.nn.Linear(d, attn.head_dim, bias=False)
    cache = model.new_cache(2, 4)
    assert [k.size(1) for k in cache.ks] == [1, 2]
    check_steps(model, PROMPTS, steps=5)


def test_encoder_decoder_generates_through_the_step():
    t5 = tiny("t5-tiny", decoder_start_id=0)
    gen = GenerationConfig(max_new_tokens=6, temperature=0.0)
    start = decoder_start_id(t5.cfg)
    assert generate(t5, [PROMPTS[0]], gen)[0] == seq2seq_reference(t5, PROMPTS[0], start, 6)


@pytest.mark.parametrize("name", ["gpt", "llama-gqa", "alibi", "window"])
def test_generate_batched_equals_one_at_a_time(name):
    preset, overrides = VARIANTS[name]
    model = tiny(preset, **overrides)
    gen = GenerationConfig(max_new_tokens=10, temperature=0.0)
    batched = generate(model, PROMPTS, gen)
    assert batched == [generate(model, [p], gen)[0] for p in PROMPTS]
    for p, out in zip(PROMPTS, batched, strict=True):
        assert out == greedy_reference(model, p, 10)


def test_step_refuses_to_overflow_the_cache():
    model = tiny("gpt-tiny")
    ids, mask = pad([[1, 2]], 0, torch.device("cpu"))
    with torch.inference_mode():
        cache = model.new_cache(1, 3)
        logits = prefill(model, ids, mask, cache)
        model.decode_step(logits.argmax(-1)[:, None], cache)
        with pytest.raises(Exception, match="cache holds 3"):
            model.decode_step(logits.argmax(-1)[:, None], cache)


def test_step_has_no_host_syncs():
    """torch.compile(fullgraph=True) of the model's own step must capture it whole: a host
    sync (`bool(t)`, `int(t)`, `.item()`) would be a graph break and raise here."""
    model = tiny("llama-tiny", sliding_window=5)
    ids, mask = pad(PROMPTS, 0, torch.device("cpu"))
    with torch.inference_mode():
        cache = model.new_cache(len(PROMPTS), ids.size(1) + 2)
        logits = prefill(model, ids, mask, cache)
        torch._dynamo.reset()
        graph = torch.compile(model.step, fullgraph=True, backend="eager")
        view = cache.step_view()
        out = graph(logits.argmax(-1)[:, None], view)
        cache.stepped()
        ref = full_forward_logits(
            model, [p + [int(t)] for p, t in zip(PROMPTS, logits.argmax(-1), strict=True)]
        )
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_step_view_of_every_row_equals_the_view_of_a_row_range():
    """`step_view()` (narrowed views) and `step_view(rows)` (indexed views) see the same
    tensors, and both are views: what a step writes lands in the cache."""
    model = tiny("llama-tiny")
    ids, mask = pad(PROMPTS, 0, torch.device("cpu"))
    with torch.inference_mode():
        cache = model.new_cache(len(PROMPTS), ids.size(1) + 2)
        prefill(model, ids, mask, cache)
        every, ranged = cache.step_view(), cache.step_view(slice(0, len(PROMPTS)))
        for a, b in zip(
            [every.keep, *every.ks, *every.vs], [ranged.keep, *ranged.ks, *ranged.vs], strict=True
        ):
            assert torch.equal(a, b) and a.shape[-2 if a.dim() == 4 else -1] == ids.size(1) + 1
        every.ks[0][:, :, -1] = 7.0
        assert bool((cache.ks[0][:, :, ids.size(1)] == 7.0).all())
        torch.testing.assert_close(every.pos, ranged.pos)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_compiled_step_gives_the_eager_tokens(mode):
    """torch.compile of the step with inductor (small graphs; tens of seconds on 2 cores)."""
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=6, temperature=0.0)
    expected = generate(model, PROMPTS, gen)
    assert generate(model, PROMPTS, gen, compile=mode) == expected
    assert generate(model, PROMPTS, gen, compile=mode) == expected
    longer = GenerationConfig(max_new_tokens=12, temperature=0.0)
    expected = generate(model, PROMPTS, longer)
    assert generate(model, PROMPTS, longer, compile=mode) == expected
    one = generate(model, PROMPTS[:1], longer)
    assert generate(model, PROMPTS[:1], longer, compile=mode) == one
    assert generate(model, PROMPTS, longer, compile=mode) == expected


def test_compile_respects_a_force_eager_stance():
    """Under the caller's "force_eager" stance nothing is compiled (and guards are not skipped)."""
    model = tiny("gpt-tiny", seed=2)
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0)
    expected = generate(model, PROMPTS, gen)
    with torch.compiler.set_stance("force_eager"):
        assert generate(model, PROMPTS, gen, compile=True) == expected


@pytest.mark.slow
def test_compiled_step_is_rebuilt_when_weights_change():
    """A frozen graph holds the weights as constants: after an in-place update (an optimizer
    step) the next compiled generation must see the new weights."""
    model = tiny("gpt-tiny", seed=1)
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0)
    generate(model, PROMPTS, gen, compile="whole")
    with torch.no_grad():
        model.heads.lm_head.weight.mul_(-1.0)  # tied to the embedding: both change
    expected = generate(model, PROMPTS, gen)
    assert generate(model, PROMPTS, gen, compile="whole") == expected


@pytest.mark.parametrize(
    "name, layers, most, span, graphs",
    [
        ("llama-gqa", 4, 1, 1, 1),  # one block a region
        ("llama-gqa", 4, 2, 2, 1),  # two regions of two blocks, one graph
        ("alibi", 6, 4, 3, 1),  # 3 divides 6 and is at least half of 4
        ("dynamic-rope", 4, 2, 2, 1),
        ("llama-gqa", 5, 3, 3, 2),  # no divisor of 5 near 3: regions of 3 and 2, two graphs
    ],
)
def test_regional_step_is_one_graph_for_every_region(name, layers, most, span, graphs):
    """Regional compilation: one compiled run of `span` blocks serves every such run of the
    stack (their weights are graph inputs, each layer's cache comes as a `LayerView`) and gives
    the eager step's logits."""
    from torch._dynamo.utils import counters

    from lmforge.generate.static import RegionalStep

    preset, overrides = VARIANTS[name]
    model = tiny(preset, n_layer=layers, **overrides)
    assert len(model.decoder.layers) == layers
    ids, mask = pad(PROMPTS, 0, torch.device("cpu"))
    torch._dynamo.reset()
    counters.clear()
    step = RegionalStep(model, backend="eager", most=most)
    assert step.span == span
    with torch.inference_mode():
        caches = [model.new_cache(len(PROMPTS), ids.size(1) + 6) for _ in range(2)]
        logits = [prefill(model, ids, mask, c) for c in caches]
        for i in range(5):
            if i == 1:
                step.checked = True  # later steps skip the guards, as in a generation
            token = logits[0].argmax(-1)[:, None]
            logits = [
                model.decode_step(token, caches[0]),
                model.decode_step(token, caches[1], step=step),
            ]
            torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_shared_compiled_step_keeps_each_threads_generation_apart():
    """One model's compiled step serves `generate` in several threads: a generation in one
    thread (its guards checked, later calls skipping them) leaves another thread's generation
    to check its own guards, and both get the eager tokens."""
    import threading

    from lmforge.generate import static

    model = tiny("llama-tiny", seed=4)
    static._REGIONAL[model] = static.RegionalStep(model, backend="eager")
    step = static._REGIONAL[model]
    gen = GenerationConfig(max_new_tokens=6, temperature=0.0)
    got = {}

    def other_thread():
        got["other"] = generate(model, PROMPTS, gen, compile="regional")
        got["other checked"] = step.checked

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert got["other checked"] and not step.checked  # set in that thread only
    assert generate(model, PROMPTS[:1], gen, compile="regional") == generate(
        model, PROMPTS[:1], gen
    )
    assert got["other"] == generate(model, PROMPTS, gen)


def test_region_span_prefers_equal_regions():
    from lmforge.generate.static import region_span

    assert [region_span(n, 6) for n in (30, 24, 12, 32, 22, 7, 4)] == [6, 6, 6, 4, 6, 6, 4]
    assert region_span(30, 10) == 10 and region_span(30, 1) == 1


def test_regional_step_serves_encoder_decoders_and_beams():
    """generate(compile="regional") through the model's cached `RegionalStep` (seeded here with
    dynamo's eager backend, no inductor): cross-attention reads its keys/values from the
    `LayerView`; beam search reorders the cache between steps."""
    from lmforge.generate import static

    t5 = tiny("t5-tiny", decoder_start_id=0)
    gen = GenerationConfig(max_new_tokens=6, temperature=0.0)
    static._REGIONAL[t5] = static.RegionalStep(t5, backend="eager")
    assert generate(t5, PROMPTS, gen, compile="regional") == generate(t5, PROMPTS, gen)
    llama = tiny("llama-tiny")
    static._REGIONAL[llama] = static.RegionalStep(llama, backend="eager")
    beams = GenerationConfig(max_new_tokens=5, num_beams=3, temperature=0.0)
    assert generate(llama, PROMPTS, beams, compile="regional") == generate(llama, PROMPTS, beams)


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_a_step_that_cannot_compile_is_one_sentence(mode):
    """No working C++ compiler for inductor: `generate(compile=...)` raises one clear sentence
    (a `GenerationError`, which the CLI prints without a traceback), not inductor's report."""
    import torch._inductor.config as inductor_config

    from lmforge.generate.static import StepCompileError

    model = tiny("gpt-tiny", seed=3)
    broken = {"cpp.cxx": (None, "/nonexistent/g++"), "fx_graph_cache": False}
    with inductor_config.patch(broken), pytest.raises(StepCompileError) as info:
        generate(model, PROMPTS, GenerationConfig(max_new_tokens=3), compile=mode)
    said = str(info.value)
    assert said.startswith("compiling the decode step failed (") and "\n" not in said
    assert "C++ compiler" in said and said.endswith("--compile).")


def test_unknown_compile_mode_is_refused():
    model = tiny("gpt-tiny")
    with pytest.raises(Exception, match="unknown compile mode 'fast'"):
        generate(model, PROMPTS, GenerationConfig(max_new_tokens=2), compile="fast")


@pytest.mark.slow
def test_regional_compile_gives_the_eager_tokens():
    """compile="regional" with inductor (one small block graph) against eager decoding."""
    model = tiny("llama-tiny", n_layer=3)
    gen = GenerationConfig(max_new_tokens=8, temperature=0.0)
    expected = generate(model, PROMPTS, gen)
    assert generate(model, PROMPTS, gen, compile="regional") == expected
    assert generate(model, PROMPTS, gen, compile="regional") == expected
    with torch.no_grad():  # weights are graph inputs: an update is seen without a rebuild
        model.heads.lm_head.weight.mul_(-1.0)
        model.decoder.layers[1].mlp.down_proj.weight.mul_(2.0)
    assert generate(model, PROMPTS, gen, compile="regional") == generate(model, PROMPTS, gen)
