"""Continuous batching: rows decoded together, arriving and leaving at different steps, give
exactly what each request gives alone through `generate`."""

from __future__ import annotations

import pytest
import torch
from gen_helpers import CharTokenizer, tiny

from lmforge.errors import GenerationError
from lmforge.generate import (
    ContinuousBatcher,
    GenerationConfig,
    TextStream,
    generate,
    generate_outputs,
)

PROMPTS = [[5, 17, 33], [9, 2, 250, 41, 7, 8, 100], [1], [60, 61, 62, 63, 64], [3, 4] * 10]


def run(batcher: ContinuousBatcher, arrivals: dict[int, list[tuple[list[int], GenerationConfig]]]):
    """Add requests at the given steps, step until idle; returns {row: tokens}, {row: reason},
    the row ids of each request in order, and the largest batch seen."""
    tokens, reasons, requests, peak, step = {}, {}, [], 0, 0
    while step <= max(arrivals) or not batcher.idle:
        for prompt, gen in arrivals.get(step, []):
            rows = batcher.add(prompt, gen)
            requests.append(rows)
            tokens.update({r: [] for r in rows})
        for event in batcher.step():
            if event.token is not None:
                tokens[event.row].append(event.token)
            if event.finish_reason is not None:
                reasons[event.row] = event.finish_reason
        peak = max(peak, batcher.active)
        step += 1
    return tokens, reasons, requests, peak


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_staggered_greedy_rows_equal_each_request_alone(preset):
    model = tiny(preset, seed=1)
    gens = [GenerationConfig(max_new_tokens=m, temperature=0) for m in (10, 4, 15, 7, 12)]
    work = list(zip(PROMPTS, gens, strict=True))
    arrivals = {0: work[:2], 2: [work[2]], 3: [work[3]], 9: [work[4]]}
    tokens, reasons, requests, peak = run(ContinuousBatcher(model, max_rows=8), arrivals)
    assert peak >= 3  # rows really shared the batch
    order = [0, 1, 2, 3, 4]
    for i, rows in zip(order, requests, strict=True):
        assert [tokens[r] for r in rows] == generate(model, [PROMPTS[i]], gens[i])
        assert all(reasons[r] == "length" for r in rows)


def test_seeded_sampling_n_and_penalties_match_generate_whatever_shares_the_batch():
    model = tiny("llama-tiny", seed=2)
    sampled = GenerationConfig(
        max_new_tokens=9, temperature=0.9, top_p=0.9, seed=5, num_return_sequences=3
    )
    penalized = GenerationConfig(
        max_new_tokens=8, temperature=1.3, top_k=20, seed=7, presence_penalty=0.5,
        frequency_penalty=0.3,
    )  # fmt: skip
    greedy = GenerationConfig(max_new_tokens=11, temperature=0, repetition_penalty=1.3)
    arrivals = {0: [(PROMPTS[1], sampled)], 1: [(PROMPTS[3], penalized)], 4: [(PROMPTS[0], greedy)]}
    tokens, _, requests, _ = run(ContinuousBatcher(model, max_rows=8), arrivals)
    for (prompt, gen), rows in zip(
        [*arrivals[0], *arrivals[1], *arrivals[4]], requests, strict=True
    ):
        assert [tokens[r] for r in rows] == generate(model, [prompt], gen)
    assert len({tuple(tokens[r]) for r in requests[0]}) > 1  # the 3 samples differ


def test_max_rows_queues_requests_and_a_large_request_runs_alone():
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=5, temperature=0)
    batcher = ContinuousBatcher(model, max_rows=2)
    arrivals = {0: [(p, gen) for p in PROMPTS[:4]]}
    tokens, _, requests, peak = run(batcher, arrivals)
    assert peak == 2
    assert [tokens[r[0]] for r in requests] == generate(model, PROMPTS[:4], gen)
    wide = GenerationConfig(max_new_tokens=3, temperature=0, num_return_sequences=3)
    _, _, _, peak = run(ContinuousBatcher(model, max_rows=2), {0: [(PROMPTS[0], wide)]})
    assert peak == 3


def test_cancel_frees_running_and_queued_rows():
    model = tiny("gpt-tiny")
    gen = GenerationConfig(max_new_tokens=30, temperature=0)
    batcher = ContinuousBatcher(model, max_rows=1)
    first = batcher.add(PROMPTS[0], gen)
    second = batcher.add(PROMPTS[1], gen)
    batcher.step()
    assert (batcher.active, batcher.waiting) == (1, 1)
    batcher.cancel(second[0])
    batcher.cancel(first[0])
    assert batcher.step() == [] and batcher.idle


def test_eos_and_stop_strings_end_rows_like_generate():
    model = tiny("llama-tiny", seed=4, vocab_size=95)  # every id one printable character
    tok = CharTokenizer()
    free = generate(model, [PROMPTS[3]], GenerationConfig(max_new_tokens=20, temperature=0))[0]
    eos = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    with_eos = GenerationConfig(max_new_tokens=20, temperature=0, eos_id=eos)
    text = tok.decode(free)
    stop = text[6:8]
    with_stop = GenerationConfig(max_new_tokens=20, temperature=0, stop=[stop])
    batcher = ContinuousBatcher(model, tokenizer=tok, max_rows=4)
    arrivals = {0: [(PROMPTS[3], with_eos), (PROMPTS[3], with_stop), (PROMPTS[0], with_eos)]}
    tokens, reasons, requests, _ = run(batcher, arrivals)
    (a,), (b,), (c,) = requests
    assert tokens[a] == generate(model, [PROMPTS[3]], with_eos)[0] and reasons[a] == "stop"
    assert len(tokens[a]) < 20
    reference = generate_outputs(model, [PROMPTS[3]], with_stop, tokenizer=tok)[0]
    stream = TextStream(tok, [stop], prompt_ids=PROMPTS[3])
    streamed = "".join(stream.push(t) for t in tokens[b]) + stream.finish()
    assert reasons[b] == "stop" and streamed == reference.text == text[: text.index(stop)]
    assert tokens[c] == generate(model, [PROMPTS[0]], with_eos)[0]


def test_a_row_that_outlives_a_longer_neighbour_stays_within_the_context():
    model = tiny("gpt-tiny", seed=5)  # learned positions: 64 at most
    long_life = GenerationConfig(max_new_tokens=54, temperature=0)
    long_prompt = GenerationConfig(max_new_tokens=14, temperature=0)
    a, b = list(range(1, 11)), list(range(100, 150))
    tokens, _, (ra, rb), peak = run(
        ContinuousBatcher(model), {0: [(a, long_life)], 30: [(b, long_prompt)]}
    )
    assert peak == 2
    assert tokens[ra[0]] == generate(model, [a], long_life)[0]
    assert tokens[rb[0]] == generate(model, [b], long_prompt)[0]


def test_logprobs_are_the_models_raw_log_softmax():
    model = tiny("gpt-tiny", seed=6)
    batcher = ContinuousBatcher(model)
    gen = GenerationConfig(max_new_tokens=4, temperature=0.7, seed=0)
    (row,) = batcher.add(PROMPTS[0], gen, logprobs=3)
    batcher.add(PROMPTS[1], gen)  # a neighbour without logprobs
    events = []
    while not batcher.idle:
        events += [e for e in batcher.step() if e.row == row]
    new = [e.token for e in events]
    with torch.no_grad():
        logp = model(torch.tensor([PROMPTS[0] + new])).logits[0].log_softmax(-1)
    for i, e in enumerate(events):
        at = len(PROMPTS[0]) - 1 + i
        assert e.logprob == pytest.approx(float(logp[at, e.token]), abs=1e-4)
        top = logp[at].topk(3)
        assert [t for t, _ in e.top_logprobs] == top.indices.tolist()


def test_bad_requests_fail_when_added():
    model = tiny("gpt-tiny")
    batcher = ContinuousBatcher(model)
    with pytest.raises(GenerationError, match="context"):
        batcher.add([1] * 60, GenerationConfig(max_new_tokens=10))
    with pytest.raises(GenerationError, match="tokenizer"):
        batcher.add([1], GenerationConfig(max_new_tokens=4, stop=["x"]))
    with pytest.raises(GenerationError, match="num_beams"):
        batcher.add([1], GenerationConfig(max_new_tokens=4, num_beams=2))
    with pytest.raises(GenerationError, match="decoder-only"):
        ContinuousBatcher(tiny("t5-tiny"))


def staggered_work(model):
    """Requests that arrive and leave at different steps: the batch grows, shrinks to one row,
    and its cache is merged and trimmed on the way."""
    gens = [GenerationConfig(max_new_tokens=m, temperature=0) for m in (10, 4, 15, 7, 12)]
    work = list(zip(PROMPTS, gens, strict=True))
    return {0: work[:2], 2: [work[2]], 3: [work[3]], 9: [work[4]], 26: [work[1]]}


def check_compiled_batcher(model, batcher):
    """After `warm_up`, the staggered requests give each request's eager tokens and compile
    nothing more: every batch size of two rows and more shares one graph, one row has its own.
    Returns the graphs the warm-up compiled."""
    from torch._dynamo.utils import counters

    counters.clear()
    batcher.warm_up()
    assert batcher.idle
    warmed = counters["stats"]["unique_graphs"]
    arrivals = staggered_work(model)
    tokens, _, requests, peak = run(batcher, arrivals)
    assert peak >= 3
    work = [w for step in sorted(arrivals) for w in arrivals[step]]
    for (prompt, gen), rows in zip(work, requests, strict=True):
        assert [tokens[r] for r in rows] == generate(model, [prompt], gen)
    assert counters["stats"]["unique_graphs"] == warmed
    return warmed


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_compiled_batch_step_has_one_graph_for_every_batch_size(preset):
    """The batcher's own regional step (dynamo's eager backend here, no inductor): the batch
    axis is symbolic, so rows joining and leaving recompile nothing after the warm-up."""
    from lmforge.generate.static import RegionalStep

    model = tiny(preset, seed=1)
    torch._dynamo.reset()
    batcher = ContinuousBatcher(model, max_rows=8)
    batcher._step = RegionalStep(model, backend="eager", dynamic_batch=True)
    assert check_compiled_batcher(model, batcher) == 2  # two rows and more; one row


def test_warm_up_compiles_even_when_the_first_token_is_eos():
    """The warm-up decodes outside the batch: a model whose greedy answer to the warm-up
    prompt is its EOS still gets both graphs compiled before the first request."""
    from torch._dynamo.utils import counters

    from lmforge.generate.static import RegionalStep

    model = tiny("llama-tiny", seed=2)
    with torch.no_grad():
        model.cfg.eos_id = int(model(torch.zeros(1, 2, dtype=torch.long)).logits[0, -1].argmax())
    torch._dynamo.reset()
    counters.clear()
    batcher = ContinuousBatcher(model, max_rows=8)
    batcher._step = RegionalStep(model, backend="eager", dynamic_batch=True)
    batcher.warm_up()
    assert counters["stats"]["unique_graphs"] == 2 and batcher.idle


@pytest.mark.slow
def test_compiled_batcher_gives_each_requests_eager_tokens_with_inductor():
    """compile=True with inductor (tens of seconds on 2 cores): the compiled graphs skip their
    guards while the cache keeps its layout, and check them again when rows come or go."""
    model = tiny("llama-tiny", seed=3, n_layer=3)
    torch._dynamo.reset()
    batcher = ContinuousBatcher(model, max_rows=8, compile=True)
    check_compiled_batcher(model, batcher)
    batcher.reset()
    assert batcher.idle and batcher._step is not None
    tokens, _, requests, _ = run(batcher, {0: [(PROMPTS[2], GenerationConfig(max_new_tokens=5))]})
    assert len(tokens[requests[0][0]]) == 5


class FailingCompile:
    """A compiled step whose compilation always fails (say, no C++ compiler)."""

    def new_generation(self):
        pass

    def __call__(self, *args, **kwargs):
        from lmforge.generate.static import StepCompileError

        raise StepCompileError("compiling the decode step failed (no C++ compiler); decode ...")


def test_a_batcher_that_cannot_compile_says_so_when_warming_up():
    from lmforge.generate.static import StepCompileError

    model = tiny("gpt-tiny")
    batcher = ContinuousBatcher(model, compile=True)
    batcher._step = FailingCompile()
    with pytest.raises(StepCompileError, match="no C\\+\\+ compiler"):
        batcher.warm_up()
    assert batcher.idle and batcher._step is None and batcher.compile_error is not None
    with pytest.raises(GenerationError, match="unknown compile mode"):
        ContinuousBatcher(model, compile="fast")


def test_a_compile_failure_while_decoding_falls_back_to_eager():
    """Without a warm-up, a compilation that fails mid-run drops the compiled step: every
    request still gets its tokens (decoded eagerly), and the batcher says why."""
    model = tiny("llama-tiny", seed=1)
    batcher = ContinuousBatcher(model, max_rows=8, compile=True)
    batcher._step = FailingCompile()
    arrivals = staggered_work(model)
    tokens, _, requests, _ = run(batcher, arrivals)
    work = [w for step in sorted(arrivals) for w in arrivals[step]]
    for (prompt, gen), rows in zip(work, requests, strict=True):
        assert [tokens[r] for r in rows] == generate(model, [prompt], gen)
    assert batcher._step is None and "no C++ compiler" in str(batcher.compile_error)
    assert batcher.fresh().compile_error is batcher.compile_error


def partitions(items):
    """Every way to split `items` into non-empty groups (the plain search)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for split in partitions(rest):
        yield [[first], *split]
        for i in range(len(split)):
            yield [*split[:i], [first, *split[i]], *split[i + 1 :]]


@pytest.mark.parametrize(
    "lengths",
    [[5], [7, 7, 7], [1, 2, 3, 40], [30, 1, 29, 2, 31], [100, 3, 4, 5, 90, 6], [9, 8, 1, 50]],
)
def test_length_groups_cost_no_more_than_any_split(lengths):
    """`length_groups` against every partition: rows x longest + a forward's fixed cost."""
    from lmforge.generate.continuous import length_groups

    def cost(groups):
        return sum(len(g) * max(lengths[i] for i in g) + 8 for g in groups)

    groups = length_groups(lengths, pass_rows=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert cost(groups) == min(cost(p) for p in partitions(list(range(len(lengths)))))


def test_a_long_prompt_is_prefilled_apart_from_short_ones(monkeypatch):
    """Admitted together, one long prompt and short ones are two prefill forwards (not every
    prompt padded to the long one); each request still gets its tokens from `generate` alone,
    into an empty batch and into a running one."""
    from lmforge.generate import continuous

    model = tiny("llama-tiny", seed=7)
    shapes = []

    def recording(model, ids, mask, cache):
        shapes.append(tuple(ids.shape))
        return continuous_prefill(model, ids, mask, cache)

    continuous_prefill = continuous.prefill
    monkeypatch.setattr(continuous, "prefill", recording)
    long = list(range(1, 200))
    gens = [GenerationConfig(max_new_tokens=m, temperature=0) for m in (6, 9, 4, 7)]
    prompts = [PROMPTS[0], long, PROMPTS[3], PROMPTS[1]]
    work = list(zip(prompts, gens, strict=True))
    for arrivals in ({0: work}, {0: [work[2]], 1: [work[0], work[1], work[3]]}):
        shapes.clear()
        tokens, _, requests, _ = run(ContinuousBatcher(model, max_rows=8), arrivals)
        order = [w for step in sorted(arrivals) for w in arrivals[step]]
        for (prompt, gen), rows in zip(order, requests, strict=True):
            assert [tokens[r] for r in rows] == generate(model, [prompt], gen)
        assert (1, len(long)) in shapes and all(s[1] < 10 for s in shapes if s[0] > 1)
