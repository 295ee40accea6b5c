"""Speculative decoding: greedy output equals the target's, samples follow the target's law."""

from __future__ import annotations

import copy

import pytest
import torch
from gen_helpers import CharTokenizer, chi2_critical, chi2_statistic, greedy_reference, tiny

from lmforge.errors import GenerationError
from lmforge.generate import (
    GenerationConfig,
    accept_draft,
    generate,
    generate_outputs,
    speculative_generate,
    speculative_outputs,
)
from lmforge.generate.sampling import next_token_probs

PROMPTS = [[5, 17, 33], [9, 2, 250, 41, 7, 8, 100], [1], [60, 61, 62, 63, 64]]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_equals_the_target_alone(k):
    target, draft = tiny("gpt-tiny", seed=0), tiny("llama-tiny", seed=1)
    gen = GenerationConfig(max_new_tokens=12, temperature=0)
    expected = [greedy_reference(target, p, 12) for p in PROMPTS]
    outs, stats = speculative_outputs(target, draft, PROMPTS, gen, k=k)
    assert [o.tokens for o in outs] == expected
    assert stats.accepted <= stats.proposed


@pytest.mark.parametrize(
    "overrides",
    [
        {"pos": "alibi"},
        {"pos": "relative"},
        {"pos": "sinusoidal"},
        {"pos": "rope", "sliding_window": 4},
    ],
)
def test_greedy_equals_the_target_for_every_position_scheme(overrides):
    """Realigning rows after each round must keep positions and relative distances intact."""
    target, draft = tiny("gpt-tiny", seed=5, **overrides), tiny("llama-tiny", seed=6)
    gen = GenerationConfig(max_new_tokens=14, temperature=0)
    expected = [greedy_reference(target, p, 14) for p in PROMPTS]
    assert generate(target, PROMPTS, gen) == expected
    assert speculative_generate(target, draft, PROMPTS, gen, k=3) == expected


def test_greedy_with_eos_and_a_perfect_draft():
    plain = greedy_reference(tiny("llama-tiny", seed=2), PROMPTS[1], 12)
    target = tiny("llama-tiny", seed=2, eos_id=plain[5])
    gen = GenerationConfig(max_new_tokens=12, temperature=0)
    outs, stats = speculative_outputs(target, copy.deepcopy(target), PROMPTS, gen, k=4)
    assert [o.tokens for o in outs] == generate(target, PROMPTS, gen)
    assert outs[1].tokens == plain[:5] and outs[1].finish_reason == "stop"
    assert stats.accepted == stats.proposed  # the draft is the target: every guess is right


def test_stop_strings_cut_like_generate():
    target, draft = tiny("gpt-tiny", seed=7), tiny("llama-tiny", seed=8)
    tok = CharTokenizer()
    text = tok.decode(greedy_reference(target, PROMPTS[0], 16))
    gen = GenerationConfig(max_new_tokens=16, temperature=0, stop=[text[6:8]])
    outs, _ = speculative_outputs(target, draft, PROMPTS[:2], gen, k=3, tokenizer=tok)
    plain = generate_outputs(target, PROMPTS[:2], gen, tokenizer=tok)
    assert [(o.tokens, o.text, o.finish_reason) for o in outs] == [
        (o.tokens, o.text, o.finish_reason) for o in plain
    ]
    assert outs[0].text == text[: text.index(text[6:8])]


def test_accept_draft_rule_edge_cases():
    p = torch.tensor([[[0.2, 0.8, 0.0], [0.5, 0.5, 0.0]]])  # (1, k + 1 = 2, V = 3)
    n, extra = accept_draft(torch.tensor([[1]]), p[:, :1].clone(), p)  # q = p: always accepted
    assert n.tolist() == [1]
    q = torch.tensor([[[0.0, 0.0, 1.0]]])  # the draft proposes a token the target never makes
    for seed in range(5):
        n, extra = accept_draft(torch.tensor([[2]]), q, p, torch.Generator().manual_seed(seed))
        assert n.tolist() == [0] and extra.item() in (0, 1)


def _joint_first_two(model, prompt, gen, vocab):
    """Exact P(x1 = a, x2 = b) of the target under the processors of `gen`; (V * V,)."""
    with torch.no_grad():
        p1 = next_token_probs(model(torch.tensor([prompt])).logits[:, -1], gen)[0]  # (V,)
        ext = torch.tensor([prompt + [a] for a in range(vocab)])
        p2 = next_token_probs(model(ext).logits[:, -1], gen)  # (V, V)
    return (p1[:, None] * p2).reshape(-1)


@pytest.mark.parametrize(
    "gen",
    [
        GenerationConfig(max_new_tokens=3, seed=11),
        GenerationConfig(max_new_tokens=3, seed=12, temperature=0.8, top_k=6, top_p=0.95),
    ],
)
def test_sampling_distribution_equals_the_target(gen):
    vocab, runs, prompt = 8, 4000, [1, 2]
    target = tiny("gpt-tiny", seed=3, vocab_size=vocab)
    draft = tiny("llama-tiny", seed=4, vocab_size=vocab)
    with torch.no_grad():  # sharpen the target (logits * 2) so that the two disagree clearly
        target.decoder.norm.weight.mul_(2)
        target.decoder.norm.bias.mul_(2)
    exact = _joint_first_two(target, prompt, gen, vocab)
    wrong = _joint_first_two(draft, prompt, gen, vocab)
    assert 0.5 * (exact - wrong).abs().sum() > 0.25

    outs, stats = speculative_outputs(target, draft, [prompt] * runs, gen, k=2)
    assert 0 < stats.accepted < stats.proposed  # both branches of the rule were taken
    firsts = torch.tensor([o.tokens[0] * vocab + o.tokens[1] for o in outs])
    counts = torch.bincount(firsts, minlength=vocab * vocab)
    stat, df = chi2_statistic(counts, exact)
    assert stat < chi2_critical(df)
    stat_wrong, df_wrong = chi2_statistic(counts, wrong)  # the test can tell laws apart
    assert stat_wrong > 5 * chi2_critical(df_wrong)

    plain = generate(target, [prompt] * runs, gen)  # the plain sampler agrees too
    counts = torch.bincount(torch.tensor([o[0] * vocab + o[1] for o in plain]), minlength=vocab**2)
    stat, df = chi2_statistic(counts, exact)
    assert stat < chi2_critical(df)


def test_errors():
    gpt, llama = tiny("gpt-tiny"), tiny("llama-tiny", vocab_size=256)
    with pytest.raises(GenerationError, match="vocabulary"):
        speculative_generate(gpt, llama, [[1]], GenerationConfig())
    with pytest.raises(GenerationError, match="penalties"):
        speculative_generate(gpt, gpt, [[1]], GenerationConfig(repetition_penalty=1.2))
    with pytest.raises(GenerationError, match="decoder-only"):
        speculative_generate(tiny("t5-tiny"), gpt, [[1]], GenerationConfig())
    with pytest.raises(GenerationError, match="at least 1"):
        speculative_generate(gpt, gpt, [[1]], GenerationConfig(), k=0)
