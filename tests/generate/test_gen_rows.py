"""The shared per-row state: `Row` (tokens, EOS, stops, budget) and `TokenHistory` (what the
penalties see), against the plain rules, and every loop that penalizes giving the same tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from gen_helpers import CharTokenizer, tiny

from lmforge.errors import GenerationError
from lmforge.generate import (
    ContinuousBatcher,
    GenerationConfig,
    SamplingRun,
    beam_search,
    generate,
)
from lmforge.generate.rows import (
    Row,
    TokenHistory,
    expand_index,
    make_rows,
    reference_penalties,
)

V = 12
PENALTIES = [
    GenerationConfig(repetition_penalty=1.4, presence_penalty=0.7, frequency_penalty=0.3),
    GenerationConfig(repetition_penalty=0.8),  # r < 1 favours repeats
    GenerationConfig(presence_penalty=-0.5, frequency_penalty=1.1),
    GenerationConfig(),  # no penalty: the logits come back as they were
]


class Plain:
    """The history as plain lists, one (prompt, output) pair per row."""

    def __init__(self, prompts: list[list[int]]) -> None:
        self.rows = [(list(p), []) for p in prompts]

    def add(self, tokens: list[int]) -> None:
        for (_, out), t in zip(self.rows, tokens, strict=True):
            out.append(t)

    def select(self, index: list[int]) -> None:
        self.rows = [copy.deepcopy(self.rows[i]) for i in index]

    def penalize(self, logits: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
        return torch.tensor(
            [
                reference_penalties(row, gen, p, o)
                for row, (p, o) in zip(logits.tolist(), self.rows, strict=True)
            ]
        )


def _check(history: TokenHistory, plain: Plain, gen: GenerationConfig, g: torch.Generator):
    logits = torch.randn(len(plain.rows), V, generator=g) * 3
    torch.testing.assert_close(history.penalize(logits, gen), plain.penalize(logits, gen))
    rows = torch.tensor([len(plain.rows) - 1, 0])  # a subset of the rows, in another order
    want = plain.penalize(logits, gen)[rows]
    torch.testing.assert_close(history.penalize(logits[rows], gen, rows), want)


def _tokens(n: int, g: torch.Generator) -> list[int]:
    return torch.randint(0, V, (n,), generator=g).tolist()  # few ids: repeats are common


@pytest.mark.parametrize("gen", PENALTIES)
def test_history_is_the_per_token_rule_through_select_merge_and_drop(gen):
    g = torch.Generator().manual_seed(0)
    prompts = [[1, 2], [3], [4, 4, 9], [5, 11]]
    history, plain = TokenHistory(prompts, V, "cpu"), Plain(prompts)
    _check(history, plain, gen, g)  # the prompts only: repetition penalty, no counts yet
    for _ in range(3):
        step = _tokens(len(plain.rows), g)
        history.add(torch.tensor(step))
        plain.add(step)
    _check(history, plain, gen, g)
    history.select([2, 0, 0, 3])  # repeat (samples), reorder (beams), drop row 1
    plain.select([2, 0, 0, 3])
    step = _tokens(4, g)
    history.add(torch.tensor(step))
    plain.add(step)
    _check(history, plain, gen, g)
    newcomer, plain_new = TokenHistory([[7, 8], [0]], V, "cpu"), Plain([[7, 8], [0]])
    newcomer.add(torch.tensor([8, 8]))
    plain_new.add([8, 8])
    before = (history.seen.clone(), history.counts.clone())
    merged = TokenHistory.merge([history, newcomer])  # a request joins the batch
    assert torch.equal(history.seen, before[0]) and torch.equal(history.counts, before[1])
    plain.rows += plain_new.rows
    assert len(merged) == 6
    _check(merged, plain, gen, g)
    merged.drop([1, 4])  # finished rows leave
    plain.select([0, 2, 3, 5])
    for _ in range(2):
        step = _tokens(4, g)
        merged.add(torch.tensor(step))
        plain.add(step)
    _check(merged, plain, gen, g)
    assert merged.counts.sum().item() == sum(len(o) for _, o in plain.rows)


def test_row_ends_at_eos_stop_string_or_budget_and_take_hides_eos():
    row = Row(eos=3, budget=4)
    assert [row.take(t) for t in (5, 6, 3, 7)] == [5, 6, None, None]
    assert row.tokens == [5, 6] and row.finish_reason == "stop" and row.output().tokens == [5, 6]
    row = Row(eos=None, budget=2)
    assert [row.take(t) for t in (3, 3, 3)] == [3, 3, None] and row.finish_reason == "length"
    tok = CharTokenizer()
    stops = make_rows(GenerationConfig(stop=["ba"]), None, 1, tok)[0]
    assert [stops.push(t) for t in tok.encode("aab")] == [False, False, False]
    assert stops.push(tok.encode("a")[0]) and stops.finish_reason == "stop"


def test_make_rows_are_prompt_major_and_expand_index_repeats_rows():
    gen = GenerationConfig(num_return_sequences=3, max_new_tokens=5)
    rows = make_rows(gen, 2, 2)
    assert [(r.prompt_index, r.sample) for r in rows] == [(i, j) for i in (0, 1) for j in (0, 1, 2)]
    assert all(r.budget == 5 and r.eos == 2 and r.tokens == [] for r in rows)
    rows[0].push(1)
    assert rows[1].tokens == []  # no shared token lists
    assert expand_index([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]
    with pytest.raises(GenerationError, match="tokenizer"):
        make_rows(GenerationConfig(stop=["x"]), None, 1)


@torch.no_grad()
def penalized_greedy_reference(model, prompt: list[int], gen: GenerationConfig) -> list[int]:
    """Greedy decoding the slow way: the full forward every step, the penalties token by token
    (`reference_penalties`), then the argmax."""
    out: list[int] = []
    for _ in range(gen.max_new_tokens):
        logits = model(torch.tensor([prompt + out])).logits[0, -1].float().tolist()
        scores = reference_penalties(logits, gen, prompt, out)
        out.append(max(range(len(scores)), key=scores.__getitem__))
    return out


@pytest.mark.parametrize("gen", PENALTIES[:3])
def test_every_penalizing_loop_is_the_plain_greedy_rule(gen):
    model = tiny("llama-tiny", seed=3)
    gen = GenerationConfig(**{**vars(gen), "max_new_tokens": 10, "temperature": 0})
    prompts = [[5, 17, 33, 17], [9, 2, 250]]
    want = [penalized_greedy_reference(model, p, gen) for p in prompts]
    assert generate(model, prompts, gen) == want
    beams = GenerationConfig(**{**vars(gen), "num_beams": 1})
    assert [o.tokens for o in beam_search(model, prompts, beams)] == want
    batcher = ContinuousBatcher(model)
    rows = [batcher.add(p, gen)[0] for p in prompts]
    got: dict[int, list[int]] = {r: [] for r in rows}
    while not batcher.idle:
        for event in batcher.step():
            got[event.row].append(event.token)
    assert [got[r] for r in rows] == want


def test_sampling_and_continuous_batching_give_the_same_tokens_with_penalties():
    """Seeded requests with penalties, n > 1, arriving at different steps next to requests
    without penalties and rows that leave early: each gets the tokens `SamplingRun` gives it."""
    model = tiny("gpt-tiny", seed=8)
    requests = [
        ([5, 17, 33], GenerationConfig(max_new_tokens=12, temperature=1.1, seed=1,
                                       repetition_penalty=1.5, num_return_sequences=2)),
        ([9, 2, 250, 41], GenerationConfig(max_new_tokens=3, temperature=0.8, seed=2)),
        ([60, 61, 60], GenerationConfig(max_new_tokens=9, temperature=0.9, top_k=40, seed=3,
                                        presence_penalty=1.0, frequency_penalty=0.6)),
        ([3, 4] * 5, GenerationConfig(max_new_tokens=7, temperature=0, frequency_penalty=2.0,
                                      num_return_sequences=2)),
    ]  # fmt: skip
    arrivals = {0: [0, 1], 2: [2], 4: [3]}
    batcher = ContinuousBatcher(model, max_rows=8)
    rows: dict[int, list[int]] = {}
    got: dict[int, list[int]] = {}
    step = 0
    while step <= max(arrivals) or not batcher.idle:
        for i in arrivals.get(step, []):
            rows[i] = batcher.add(*requests[i])
            got.update({r: [] for r in rows[i]})
        for event in batcher.step():
            if event.token is not None:
                got[event.row].append(event.token)
        step += 1
    for i, (prompt, gen) in enumerate(requests):
        run = SamplingRun(model, [prompt], gen)
        for _ in run.steps():
            pass
        assert [got[r] for r in rows[i]] == [o.tokens for o in run.outputs], i
    assert got[rows[0][0]] != got[rows[0][1]]  # the two samples differ
