"""Speed where users see it: `GenerationStats` of a run, `lmforge generate --stats`."""

from __future__ import annotations

from gen_helpers import tiny

from lmforge.generate import GenerationConfig, SamplingRun
from lmforge.generate.core import GenerationStats


def test_run_counts_tokens_and_times():
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=7, temperature=0.0)
    run = SamplingRun(model, [[1, 2, 3], [4, 5]], gen)
    steps = list(run.steps())
    stats = run.stats
    assert stats.prompt_tokens == 5 and stats.rows == 2
    assert stats.new_tokens == sum(len(o.tokens) for o in run.outputs)
    assert stats.steps == len(steps) - 1
    assert 0 < stats.ttft_s <= stats.total_s
    assert stats.tokens_per_s == stats.new_tokens / stats.total_s


def test_rates_follow_their_formulas():
    stats = GenerationStats(prompt_tokens=4, new_tokens=10, ttft_s=0.5, total_s=2.5, steps=9)
    assert stats.tokens_per_s == 4.0
    assert stats.decode_tokens_per_s == 9 / 2.0
    line = stats.summary()
    assert "10 tokens in 2.50 s (4.0 tokens/s)" in line and "first token 500 ms" in line
