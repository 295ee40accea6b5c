"""The state of one sequence being generated, shared by every decode loop (sampling, beam
candidates' bookkeeping aside, speculative decoding, continuous batching).

A row collects its new tokens and ends on its own:

    EOS token        -> finish_reason "stop" (the EOS is not kept)
    a stop string    -> finish_reason "stop" (the text is cut before it afterwards)
    its token budget -> finish_reason "length"
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.generate.core import FinishReason, GenerationOutput
from lmforge.generate.stops import StopStrings


@dataclass
class Row:
    """One sequence: its tokens, end conditions and random generator.

    Attributes:
        eos: the end-of-sequence id (None: no EOS).
        budget: the most new tokens (max_new_tokens).
        stops: stop-string checker, or None.
        generator: the random generator its samples draw from (shared by a request's rows).
        prompt_index: which prompt it continues; sample: which of the prompt's samples.
        tokens: the new tokens so far; finish_reason: set once the row has ended.
    """

    eos: int | None
    budget: int
    stops: StopStrings | None = None
    generator: torch.Generator | None = None
    prompt_index: int = 0
    sample: int = 0
    tokens: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def left(self) -> int:
        """Tokens this row may still generate."""
        return self.budget - len(self.tokens)

    def push(self, token: int) -> bool:
        """Add one token (unless it is EOS); True when this ended the row."""
        if self.done:
            return False
        if token == self.eos:
            self.finish_reason = "stop"
            return True
        self.tokens.append(token)
        if self.stops is not None and self.stops.hit(self.tokens):
            self.finish_reason = "stop"
        elif self.left <= 0:
            self.finish_reason = "length"
        return self.done

    def output(self) -> GenerationOutput:
        """The row as a returned sequence."""
        return GenerationOutput(
            tokens=self.tokens,
            finish_reason=self.finish_reason or "length",
            prompt_index=self.prompt_index,
        )
