"""Sampling fields beyond OpenAI's (top_k, min_p, repetition_penalty, as vLLM and llama.cpp's
server take them) change the answer as `lmforge.generate` does; bad values are refused with one
sentence (beam search: test_serve_lanes.py)."""

from __future__ import annotations

import openai
import pytest
from test_serve_api import prompt_ids, reference_texts
from test_serve_errors import OK, check_envelope

from lmforge.generate import GenerationConfig, generate

PROMPT = "Line 3: the quick"
NEW = 16


def answer(client, **extra) -> str:
    r = client.completions.create(**{**OK, "prompt": PROMPT, "max_tokens": NEW}, extra_body=extra)
    return r.choices[0].text


def test_extra_sampling_fields_match_generate(client, reference):
    model, tok = reference
    ids = prompt_ids(tok, PROMPT)
    greedy = GenerationConfig(max_new_tokens=NEW, temperature=0)
    greedy_tokens = generate(model, [ids], greedy)[0]
    assert len(greedy_tokens) - len(set(greedy_tokens)) >= 2  # repeats, for the penalty to cut
    penalised = GenerationConfig(max_new_tokens=NEW, temperature=0, repetition_penalty=5.0)
    tokens = generate(model, [ids], penalised)[0]
    assert len(tokens) == len(set(tokens))
    assert (
        answer(client, temperature=0, repetition_penalty=5.0)
        == (reference_texts(reference, ids, penalised)[0])
    )
    expected = reference_texts(reference, ids, greedy)[0]
    assert answer(client, temperature=1.0, top_k=1, seed=3) == expected  # top-1 sampling
    assert answer(client, temperature=1.0, min_p=1.0, seed=3) == expected  # only the top p
    assert answer(client, temperature=0, top_k=-1) == expected  # vLLM's "off"


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        (dict(top_k=-3), "top_k", "integer_below_min_value"),
        (dict(min_p=1.5), "min_p", "number_above_max_value"),
        (dict(repetition_penalty=0), "repetition_penalty", "number_below_min_value"),
    ],
)
def test_bad_extras_are_refused(client, change, param, code):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**OK, extra_body=change)
    check_envelope(info.value, 400, param, code)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=OK["model"], messages=[{"role": "user", "content": "hi"}], extra_body=change
        )
    check_envelope(info.value, 400, param, code)
