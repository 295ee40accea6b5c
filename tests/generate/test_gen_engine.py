"""The engine: KV-cache decoding equals full recomputation, batching, seeds, stops, limits."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import (
    ByteTokenizer,
    ScriptedLM,
    greedy_reference,
    seq2seq_reference,
    tiny,
)

from lmforge.errors import GenerationError
from lmforge.generate import GenerationConfig, generate, generate_outputs, generate_text
from lmforge.generate.processors import (
    frequency_penalty,
    presence_penalty,
    repetition_penalty,
)

GREEDY = GenerationConfig(max_new_tokens=10, temperature=0)
PROMPTS = [[5, 17, 33], [9, 2, 250, 41, 7, 8, 100], [1], [60, 61, 62, 63, 64]]


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_greedy_with_cache_equals_full_recompute(preset):
    model = tiny(preset)
    for prompt in PROMPTS[:2]:
        assert generate(model, [prompt], GREEDY) == [greedy_reference(model, prompt, 10)]


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_batched_left_padded_equals_one_at_a_time(preset):
    model = tiny(preset, seed=1)
    batched = generate(model, PROMPTS, GREEDY)
    assert batched == [generate(model, [p], GREEDY)[0] for p in PROMPTS]
    assert generate(model, torch.tensor([PROMPTS[0]]), GREEDY) == batched[:1]


@pytest.mark.parametrize("preset", ["t5-tiny", "transformer-tiny"])
def test_encoder_decoder_greedy_with_cache_equals_recompute(preset):
    model = tiny(preset, pad_id=0)
    model.train()  # generate must switch dropout off and then restore the mode
    outputs = generate(model, PROMPTS, GREEDY)
    assert model.training
    model.eval()
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        assert out == seq2seq_reference(model, prompt, 0, 10)


def test_same_seed_same_samples_different_seed_different():
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=50, seed=7)
    first = generate(model, PROMPTS, gen)
    assert generate(model, PROMPTS, gen) == first
    other = generate(model, PROMPTS, GenerationConfig(max_new_tokens=12, top_k=50, seed=8))
    assert other != first


def test_num_return_sequences_is_prompt_major():
    model = tiny("llama-tiny")
    sampled = generate(
        model, PROMPTS[:2], GenerationConfig(max_new_tokens=6, num_return_sequences=3, seed=0)
    )
    assert len(sampled) == 6 and all(len(s) == 6 for s in sampled)
    assert len({tuple(s) for s in sampled}) > 1
    greedy = GenerationConfig(max_new_tokens=6, temperature=0, num_return_sequences=3)
    copies = generate(model, PROMPTS[:2], greedy)
    singles = generate(model, PROMPTS[:2], GenerationConfig(max_new_tokens=6, temperature=0))
    assert copies == [singles[0]] * 3 + [singles[1]] * 3


def test_penalties_in_the_loop_match_a_reference_loop():
    model = tiny("gpt-tiny", seed=3)
    prompt = [5, 17, 33, 17]
    gen = GenerationConfig(
        max_new_tokens=12,
        temperature=0,
        repetition_penalty=1.8,
        presence_penalty=0.5,
        frequency_penalty=0.3,
    )
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([ids])).logits[:, -1]
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[0, ids] = True
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=512)[
                None
            ].float()
            logits = repetition_penalty(logits, seen, 1.8)
            logits = frequency_penalty(presence_penalty(logits, counts, 0.5), counts, 0.3)
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    assert generate(model, [prompt], gen) == [out]
    assert out != greedy_reference(model, prompt, 12)  # the penalties did change something


def test_stops_at_eos_from_config_or_override():
    plain = greedy_reference(tiny("gpt-tiny"), PROMPTS[1], 10)
    eos = plain[4]
    expected = plain[: plain.index(eos)]
    model = tiny("gpt-tiny", eos_id=eos)  # same seed, same weights, EOS in the config
    outs = generate_outputs(model, [PROMPTS[1], PROMPTS[0]], GREEDY)
    assert outs[0].tokens == expected and outs[0].finish_reason == "stop"
    assert outs[1].finish_reason in ("stop", "length")
    override = GenerationConfig(max_new_tokens=10, temperature=0, eos_id=eos)
    assert generate(tiny("gpt-tiny"), [PROMPTS[1]], override) == [expected]


def test_scripted_eos_is_not_returned():
    model = ScriptedLM([65, 66, 256, 67], prompt_len=1, eos_id=256)
    out = generate_outputs(model, [[1]], GenerationConfig(max_new_tokens=8, temperature=0))
    assert out[0].tokens == [65, 66] and out[0].finish_reason == "stop"


def test_stop_strings_cut_text_and_tokens():
    script = list(b"Hello, wor") + list(b"ld!") + list(b" END more text")
    model = ScriptedLM(script, prompt_len=2)
    gen = GenerationConfig(max_new_tokens=40, temperature=0, stop=["ld! E", "zzz"])
    out = generate_outputs(model, [[72, 105]], gen, tokenizer=ByteTokenizer())[0]
    assert out.text == "Hello, wor" and out.finish_reason == "stop"
    assert bytes(out.tokens) == b"Hello, wor"
    assert len(generate(model, [[72, 105]], gen, ByteTokenizer())[0]) == 10
    text = generate_text(model, ByteTokenizer(), "Hi", gen)
    assert text == ["Hello, wor"]
    with pytest.raises(GenerationError, match="stop strings need a tokenizer"):
        generate(model, [[72, 105]], gen)


def test_prompt_too_long_for_learned_positions():
    model = tiny("gpt-tiny")  # max_seq_len = 64
    with pytest.raises(GenerationError) as err:
        generate(model, [list(range(60))], GenerationConfig(max_new_tokens=10))
    assert str(err.value) == (
        "the prompt has 60 tokens and max_new_tokens=10, together more than the model's "
        "context of 64; shorten the prompt or ask for fewer tokens."
    )
    assert len(generate(model, [list(range(54))], GenerationConfig(max_new_tokens=10))[0]) == 10


@pytest.mark.parametrize(
    ("prompts", "words"),
    [([], "no prompts"), ([[1], []], "prompt 1 is empty"), ([[1, 9999]], "outside the vocabulary")],
)
def test_bad_prompts(prompts, words):
    with pytest.raises(GenerationError, match=words):
        generate(tiny("gpt-tiny"), prompts, GREEDY)


def test_encoder_only_model_cannot_generate():
    with pytest.raises(GenerationError, match="has no causal LM head"):
        generate(tiny("bert-tiny"), [[1, 2]], GREEDY)
