"""Streaming: yield text as it is generated, never splitting a UTF-8 character.

A byte-level token may hold part of a character; decoding such a tail gives U+FFFD. The
`IncrementalDecoder` of `lmforge.tokenizer` emits new text only once the decoded tail is whole.
On top, text that could be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import Any

from torch import nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import SamplingRun, encode_prompt
from lmforge.generate.stops import find_stop, partial_stop_len
from lmforge.tokenizer import IncrementalDecoder


def stream(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    gen: GenerationConfig | None = None,
    compile: bool = False,
) -> Iterator[str]:
    """Generate from one text prompt, yielding text deltas as they become final.

    The deltas join to exactly what `generate_text` returns for the same settings: EOS ends the
    stream, and the text ends before the first stop string.
    """
    gen = gen or GenerationConfig()
    if gen.num_beams > 1 or gen.num_return_sequences > 1:
        raise GenerationError(
            "stream yields one sequence; set num_beams=1 and num_return_sequences=1."
        )
    ids = encode_prompt(tokenizer, prompt)
    run = SamplingRun(model, [ids], gen, tokenizer, compile)
    decoder = IncrementalDecoder(tokenizer, prompt_ids=ids)
    pending = ""  # decoded text not yet yielded (it may begin a stop string)
    with closing(run.steps()) as steps:  # closing restores the model's train/eval mode
        for new in steps:
            if new[0] is None:
                break
            pending += decoder.step(new[0])
            at = find_stop(pending, gen.stop)
            if at is not None:
                if at:
                    yield pending[:at]
                return
            ready = len(pending) - partial_stop_len(pending, gen.stop)
            if ready:
                yield pending[:ready]
                pending = pending[ready:]
    pending += decoder.finish()
    at = find_stop(pending, gen.stop)
    pending = pending if at is None else pending[:at]
    if pending:
        yield pending
