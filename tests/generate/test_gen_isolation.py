"""One request's failure in a continuous batch is its own: when a batched prefill, cache
allocation or decode step raises, exactly the request at fault fails (an event with `error`
for each of its rows) and every other request gets the tokens it gets alone."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import tiny

from lmforge.generate import ContinuousBatcher, GenerationConfig, generate
from lmforge.models import KVCache

PROMPTS = [[5, 17, 33], [9, 2, 250, 41, 7, 8, 100], [1], [60, 61, 62, 63, 64], [3, 4] * 6]
BUDGETS = [10, 6, 12, 8, 9]


class Poisoned(RuntimeError):
    """What the guarded model raises."""


def guard(model, bad) -> dict[str, int]:
    """Make the model's forward (prefill) and decode step raise `Poisoned` whenever
    `bad(input_ids)` is true; returns call counters."""
    forward, step = model.forward, model.step
    calls = {"forward": 0, "step": 0}

    def guarded_forward(input_ids, *args, **kwargs):
        calls["forward"] += 1
        if bad(input_ids):
            raise Poisoned("poisoned input (simulated)")
        return forward(input_ids, *args, **kwargs)

    def guarded_step(input_ids, *args, **kwargs):
        calls["step"] += 1
        if bad(input_ids):
            raise Poisoned("poisoned input (simulated)")
        return step(input_ids, *args, **kwargs)

    model.forward, model.step = guarded_forward, guarded_step
    return calls


def run(batcher: ContinuousBatcher, work, arrivals=None):
    """Add `work` [(prompt, gen)] (all at step 0, or request i at step arrivals[i]) and step
    until idle: ({request: [tokens per row]}, {request: error}, steps)."""
    arrivals = arrivals or [0] * len(work)
    rows, tokens, errors, step = {}, {}, {}, 0
    while step <= max(arrivals) or not batcher.idle:
        for i, (prompt, gen) in enumerate(work):
            if arrivals[i] == step:
                rows[i] = batcher.add(prompt, gen)
                tokens.update({r: [] for r in rows[i]})
        for event in batcher.step():
            owner = next(i for i, ids in rows.items() if event.row in ids)
            if event.error is not None:
                assert event.token is None and event.finish_reason is None
                errors.setdefault(owner, []).append(event.error)
            elif event.token is not None:
                tokens[event.row].append(event.token)
        step += 1
        assert step < 100, "the batch never emptied"
    return {i: [tokens[r] for r in ids] for i, ids in rows.items()}, errors, step


def greedy_work(n: int = 1):
    gens = [
        GenerationConfig(max_new_tokens=b, temperature=0, num_return_sequences=n if i == 1 else 1)
        for i, b in enumerate(BUDGETS)
    ]
    return list(zip(PROMPTS, gens, strict=True))


def alone(model, work) -> list[list[list[int]]]:
    return [generate(model, [prompt], gen) for prompt, gen in work]


def a_token_only(request: int, solo, prompts) -> int:
    """A token that request `request` generates alone (after its first) and that no other
    request ever sees: feeding it back is bound to that request."""
    others = {
        t
        for i, outs in enumerate(solo)
        if i != request
        for t in [*prompts[i], *(tok for out in outs for tok in out)]
    }
    for token in solo[request][0][1:]:
        if token not in others and token not in prompts[request]:
            return token
    raise AssertionError("no token of that request is unique; pick another seed")


@pytest.mark.parametrize("arrivals", [None, [0, 1, 1, 3, 4]])
def test_a_decode_step_failing_on_one_rows_token_fails_only_that_request(arrivals):
    model = tiny("gpt-tiny", seed=1)
    work = greedy_work(n=2)
    solo = alone(model, work)
    poison = a_token_only(3, solo, PROMPTS)
    calls = guard(model, lambda ids: bool((ids == poison).any()))
    outputs, errors, _ = run(ContinuousBatcher(model, max_rows=8), work, arrivals)
    assert list(errors) == [3]  # exactly the request that fed the poisoned token
    assert len(errors[3]) == 1 and isinstance(errors[3][0], Poisoned)
    cut = solo[3][0].index(poison)
    assert outputs[3] == [solo[3][0][:cut]]  # its tokens before the failing step
    for i in (0, 1, 2, 4):
        assert outputs[i] == solo[i], i  # the others: the same tokens as alone
    assert calls["step"] > 0


def test_a_prefill_failing_on_one_prompt_fails_only_that_request():
    model = tiny("llama-tiny", seed=3)
    work = greedy_work(n=2)
    solo = alone(model, work)
    poison = next(t for t in PROMPTS[4] if all(t not in p for p in PROMPTS[:4]))
    assert all(poison not in out for outs in solo[:4] for out in outs)
    guard(model, lambda ids: bool((ids == poison).any()))
    outputs, errors, _ = run(ContinuousBatcher(model, max_rows=8), work)
    assert list(errors) == [4] and outputs[4] == [[]]
    for i in range(4):
        assert outputs[i] == solo[i], i


def test_a_broken_model_fails_every_request_quickly():
    model = tiny("gpt-tiny", seed=1)
    work = greedy_work(n=2)
    calls = guard(model, lambda ids: True)
    outputs, errors, steps = run(ContinuousBatcher(model, max_rows=8), work)
    assert sorted(errors) == [0, 1, 2, 3, 4] and steps == 1
    assert len(errors[1]) == 2  # one event per row of a request with n=2
    assert calls["forward"] == 1 + len(work)  # the batch, then each request alone
    assert all(out == [] for outs in outputs.values() for out in outs)


def test_a_decode_step_that_always_fails_fails_every_row_in_one_step():
    model = tiny("gpt-tiny", seed=1)
    work = greedy_work()
    calls = guard(model, lambda ids: ids.size(1) == 1)  # prefill runs, every decode step fails
    outputs, errors, steps = run(ContinuousBatcher(model, max_rows=8), work)
    assert sorted(errors) == [0, 1, 2, 3, 4] and steps == 1
    assert calls["step"] <= 2 * len(work)  # a bisection, not a retry loop
    assert all(outs == [[]] for outs in outputs.values())  # a failed step's tokens are not sent


def test_a_failure_bound_to_the_batch_size_is_decoded_in_pieces():
    """Say the full batch runs out of memory: no request is at fault, every one finishes."""
    model = tiny("gpt-tiny", seed=1)
    work = greedy_work()
    solo = alone(model, work)
    guard(model, lambda ids: ids.size(0) > 2)
    outputs, errors, _ = run(ContinuousBatcher(model, max_rows=8), work, [0, 1, 2, 3, 4])
    assert errors == {}
    assert [outputs[i] for i in range(5)] == solo


def test_a_cache_allocation_failure_fails_only_the_request_that_needs_it(monkeypatch):
    model = tiny("gpt-tiny", seed=1)
    work = greedy_work()
    work[2] = (PROMPTS[2], GenerationConfig(max_new_tokens=40, temperature=0))
    solo = alone(model, work)
    new_cache = model.new_cache

    def allocate(batch, max_len, *args, **kwargs):
        if max_len > 30:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")
        return new_cache(batch, max_len, *args, **kwargs)

    model.new_cache = allocate  # the cache of a batch started by request 2 is too big
    outputs, errors, _ = run(ContinuousBatcher(model, max_rows=8), work, [1, 1, 0, 1, 1])
    assert list(errors) == [2] and "allocate" in str(errors[2][0])
    assert [outputs[i] for i in (0, 1, 3, 4)] == [solo[i] for i in (0, 1, 3, 4)]

    # the merge into a running batch allocates too: a request whose merge fails fails alone
    model.new_cache = new_cache
    concat = KVCache.concat

    def merge(caches, capacity):
        if capacity > 30:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return concat(caches, capacity)

    monkeypatch.setattr(KVCache, "concat", staticmethod(merge))
    outputs, errors, _ = run(ContinuousBatcher(model, max_rows=8), work, [0, 1, 1, 2, 2])
    assert list(errors) == [2] and isinstance(errors[2][0], torch.OutOfMemoryError)
    assert [outputs[i] for i in (0, 1, 3, 4)] == [solo[i] for i in (0, 1, 3, 4)]
