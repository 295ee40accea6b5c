"""Streaming: yield text as it is generated, never splitting a UTF-8 character.

A byte-level token may hold part of a character; decoding such a tail gives U+FFFD. The
`IncrementalDecoder` of `lmforge.tokenizer` emits new text only once the decoded tail is whole.
On top, text that could be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import Any

from torch import nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import GenerationStats
from lmforge.generate.engine import SamplingRun, encode_prompt
from lmforge.generate.stops import find_stop, partial_stop_len
from lmforge.tokenizer import IncrementalDecoder


class TextStream:
    """The text of one growing sequence as deltas: whole characters only, and text that could
    begin a stop string held back until it is known not to; nothing from a stop string on.

    Example:
        >>> text = TextStream(tokenizer, ["\\n\\n"], prompt_ids=ids)
        >>> deltas = [text.push(t) for t in new_tokens] + [text.finish()]

    Args:
        tokenizer: the tokenizer that made the ids.
        stop: stop strings; the text ends before the first one.
        prompt_ids: ids before the new ones (context for the spacing of the first delta).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), prompt_ids: Sequence[int] = ()):
        self.stop = list(stop)
        self.stopped = False  # a stop string was found: every later push returns ""
        self._decoder = IncrementalDecoder(tokenizer, prompt_ids=prompt_ids)
        self._pending = ""  # decoded text not yet handed out (it may begin a stop string)

    def push(self, token: int) -> str:
        """Add one token; return the text that became final."""
        if self.stopped:
            return ""
        self._pending += self._decoder.step(token)
        return self._release(final=False)

    def finish(self) -> str:
        """The sequence ended: return everything still held back (cut before a stop string)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.finish()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        at = find_stop(self._pending, self.stop)
        if at is not None:
            self.stopped = True
            out, self._pending = self._pending[:at], ""
            return out
        ready = (
            len(self._pending)
            if final
            else len(self._pending) - partial_stop_len(self._pending, self.stop)
        )
        out, self._pending = self._pending[:ready], self._pending[ready:]
        return out


def stream(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    gen: GenerationConfig | None = None,
    compile: bool | str = False,
) -> Iterator[str]:
    """Generate from one text prompt, yielding text deltas as they become final.

    The deltas join to exactly what `generate_text` returns for the same settings: EOS ends the
    stream, and the text ends before the first stop string.
    """
    yield from stream_ids(model, tokenizer, encode_prompt(tokenizer, prompt), gen, compile)


def stream_ids(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: list[int],
    gen: GenerationConfig | None = None,
    compile: bool | str = False,
    on_stats: Callable[[GenerationStats], None] | None = None,
) -> Iterator[str]:
    """Like `stream`, from a prompt that is already token ids (a chat template's, say);
    `on_stats` receives the run's `GenerationStats` (tokens/s, time to first token) at the end."""
    gen = gen or GenerationConfig()
    if gen.num_beams > 1 or gen.num_return_sequences > 1:
        raise GenerationError(
            "stream yields one sequence; set num_beams=1 and num_return_sequences=1."
        )
    run = SamplingRun(model, [prompt_ids], gen, tokenizer, compile)
    text = TextStream(tokenizer, gen.stop, prompt_ids=prompt_ids)
    try:
        with closing(run.steps()) as steps:  # closing restores the model's train/eval mode
            for new in steps:
                if new[0] is None:
                    break
                delta = text.push(new[0])
                if delta:
                    yield delta
                if text.stopped:
                    return
        tail = text.finish()
        if tail:
            yield tail
    finally:
        if on_stats is not None:
            on_stats(run.stats)
