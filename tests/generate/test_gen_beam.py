"""Beam search: width 1 is greedy, wider beams find sequences at least as likely as greedy."""

from __future__ import annotations

import pytest
from gen_helpers import greedy_reference, seq2seq_reference, sequence_logprob, tiny

from lmforge.errors import GenerationError
from lmforge.generate import GenerationConfig, beam_search, generate, generate_outputs

PROMPTS = [[5, 17, 33], [9, 2, 250, 41, 7, 8, 100], [1]]


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_one_beam_equals_greedy(preset):
    model = tiny(preset)
    outs = beam_search(model, PROMPTS, GenerationConfig(max_new_tokens=8, num_beams=1))
    assert [o.tokens for o in outs] == [greedy_reference(model, p, 8) for p in PROMPTS]


def test_one_beam_equals_greedy_encoder_decoder():
    model = tiny("t5-tiny", pad_id=0)
    outs = beam_search(model, PROMPTS, GenerationConfig(max_new_tokens=6, num_beams=1))
    assert [o.tokens for o in outs] == [seq2seq_reference(model, p, 0, 6) for p in PROMPTS]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beams_find_at_least_the_greedy_logprob(seed):
    model = tiny("gpt-tiny", seed=seed)
    gen = GenerationConfig(
        max_new_tokens=6, num_beams=4, num_return_sequences=4, length_penalty=0.0
    )
    for prompt in PROMPTS:
        outs = generate_outputs(model, [prompt], gen)
        best = outs[0]
        greedy = greedy_reference(model, prompt, 6)
        assert (
            sequence_logprob(model, prompt, best.tokens)
            >= sequence_logprob(model, prompt, greedy) - 1e-5
        )
        for o in outs:  # the score is the true sum of log-probabilities (alpha = 0)
            assert o.score == pytest.approx(sequence_logprob(model, prompt, o.tokens), abs=1e-4)
        assert [o.score for o in outs] == sorted((o.score for o in outs), reverse=True)


def test_batched_beams_equal_one_prompt_at_a_time():
    model = tiny("llama-tiny", seed=4)
    gen = GenerationConfig(max_new_tokens=6, num_beams=3, num_return_sequences=2)
    batched = generate(model, PROMPTS, gen)
    assert len(batched) == 6
    assert batched == [s for p in PROMPTS for s in generate(model, [p], gen)]


def test_eos_finishes_hypotheses_and_length_penalty_normalises():
    plain = greedy_reference(tiny("gpt-tiny", seed=5), PROMPTS[0], 8)
    eos = plain[2]
    model = tiny("gpt-tiny", seed=5, eos_id=eos)
    for early in (True, False):
        gen = GenerationConfig(
            max_new_tokens=8, num_beams=3, num_return_sequences=3, early_stopping=early
        )
        outs = generate_outputs(model, [PROMPTS[0]], gen)
        assert len(outs) == 3
        for o in outs:
            assert eos not in o.tokens
            length = len(o.tokens) + (o.finish_reason == "stop")
            logp = sequence_logprob(
                model, PROMPTS[0], o.tokens + [eos] * (o.finish_reason == "stop")
            )
            assert o.score == pytest.approx(logp / length, abs=1e-4)
    patient = generate_outputs(model, [PROMPTS[0]], GenerationConfig(max_new_tokens=8, num_beams=3))
    hasty = generate_outputs(
        model, [PROMPTS[0]], GenerationConfig(max_new_tokens=8, num_beams=3, early_stopping=True)
    )
    assert patient[0].score >= hasty[0].score - 1e-6


def test_beam_search_rejects_stop_strings():
    with pytest.raises(GenerationError, match="not supported with beam search"):
        beam_search(tiny("gpt-tiny"), [[1]], GenerationConfig(num_beams=2, stop=["x"]))
