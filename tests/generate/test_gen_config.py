"""GenerationConfig validation: one clear sentence per mistake."""

from __future__ import annotations

import pytest

from lmforge.errors import GenerationError, LmforgeError
from lmforge.generate import GenerationConfig


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"min_p": 1.5}, "min_p must be in [0, 1]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"presence_penalty": 3.0}, "presence_penalty must be in [-2, 2]"),
        ({"frequency_penalty": -2.5}, "frequency_penalty must be in [-2, 2]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"num_return_sequences": 0}, "num_return_sequences must be at least 1"),
        ({"num_beams": 0}, "num_beams must be at least 1"),
        ({"num_beams": 2, "num_return_sequences": 3}, "is more than num_beams=2"),
        ({"stop": ["ok", ""]}, "every stop string must be a non-empty string"),
        ({"eos_id": -1}, "eos_id must be a token id"),
    ],
)
def test_bad_values_raise_one_clear_sentence(kwargs, words):
    with pytest.raises(GenerationError) as err:
        GenerationConfig(**kwargs)
    message = str(err.value)
    assert words in message
    assert isinstance(err.value, LmforgeError)
    assert message.endswith(".") and "\n" not in message


def test_defaults_and_derived_flags():
    gen = GenerationConfig()
    assert gen.temperature == 1.0 and not gen.greedy and not gen.uses_penalties
    assert GenerationConfig(temperature=0).greedy
    assert GenerationConfig(frequency_penalty=0.1).uses_penalties
    assert GenerationConfig(stop="\n").stop == ["\n"]
