"""The state of the sequences being generated, shared by every decode loop (sampling, beam
search, speculative decoding, continuous batching in the server, chat).

Each sequence is a `Row`; it collects its new tokens and ends on its own:

    EOS token        -> finish_reason "stop" (the EOS is not kept)
    a stop string    -> finish_reason "stop" (the text is cut before it afterwards)
    its token budget -> finish_reason "length"

What the penalties look at is kept for the whole batch at once, in one `TokenHistory` (batched
(B, V) tensors, row b = the batch's row b): it follows the batch as rows are repeated for
samples or beams, reordered, dropped when they finish and merged when new requests join.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import FinishReason, GenerationOutput
from lmforge.generate.processors import apply_penalties
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

    def take(self, token: int) -> int | None:
        """`push` the token; returns it as the row's new output token, or None when the row
        had already ended or the token is EOS (which ends the row and is not returned)."""
        if self.done:
            return None
        self.push(token)
        return None if token == self.eos else token

    def output(self) -> GenerationOutput:
        """The row as a returned sequence."""
        return GenerationOutput(
            tokens=self.tokens,
            finish_reason=self.finish_reason or "length",
            prompt_index=self.prompt_index,
        )


def stop_strings(gen: GenerationConfig, tokenizer: Any) -> StopStrings | None:
    """A stop-string checker, or None when `gen.stop` is empty."""
    if not gen.stop:
        return None
    if tokenizer is None:
        raise GenerationError(
            "stop strings need a tokenizer to decode the tokens; pass tokenizer=... or drop stop."
        )
    return StopStrings(tokenizer, gen.stop)


R = TypeVar("R", bound=Row)


def make_rows(
    gen: GenerationConfig,
    eos: int | None,
    prompts: int,
    tokenizer: Any = None,
    generator: torch.Generator | None = None,
    row_type: type[R] = Row,
) -> list[R]:
    """The rows of `prompts` prompts, `gen.num_return_sequences` per prompt, prompt-major
    (prompt i's samples are consecutive), each with `gen`'s budget and stop strings."""
    n = gen.num_return_sequences
    return [
        row_type(eos, gen.max_new_tokens, stop_strings(gen, tokenizer), generator, i, j)
        for i in range(prompts)
        for j in range(n)
    ]


def expand_index(copies: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """The batch index that repeats row i `copies[i]` times, in order: prefill each prompt
    once, then `select`/`reorder` with this index for its samples (or beams)."""
    n = torch.tensor(list(copies), dtype=torch.long, device=device)
    return torch.arange(len(copies), device=device).repeat_interleave(n)


class TokenHistory:
    """What the penalties look at, for every row of a batch at once:

        seen[b, v]   = 1 if token v is in row b's prompt or its output so far   (B, V) bool
        counts[b, v] = c, the times row b generated token v so far               (B, V) float

    `seen` drives the repetition penalty (CTRL, over prompt + output), `counts` the presence and
    frequency penalties (OpenAI, over the output only); see `penalize`. The one home of this
    state for sampling, beam search and continuous batching: rows are kept, repeated, reordered
    or dropped with `select` and appended with `merge`, as the batch's KV cache rows are.

    Args:
        prompts: each row's prompt ids (what counts as seen before the first new token).
        vocab_size: V.
        device: where the tensors live.
    """

    def __init__(
        self, prompts: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str
    ) -> None:
        self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
        for row, ids in enumerate(prompts):
            if len(ids):
                self.seen[row, torch.as_tensor(list(ids), device=device)] = True
        self.counts = torch.zeros(len(prompts), vocab_size, device=device)

    def __len__(self) -> int:
        return self.seen.size(0)

    def add(self, tokens: Tensor) -> None:
        """Record one generated token per row, (B,) ids: seen[b, t_b] = 1, counts[b, t_b] += 1."""
        self.seen.scatter_(1, tokens[:, None], True)
        self.counts.scatter_add_(
            1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=self.counts.dtype)
        )

    def select(self, index: Tensor | Sequence[int]) -> None:
        """Row i becomes old row index[i]: keep, repeat (samples, beams), reorder (beams) or
        drop (finished rows) rows."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.seen.device)
        self.seen = self.seen.index_select(0, index)
        self.counts = self.counts.index_select(0, index)

    def drop(self, rows: Sequence[int]) -> None:
        """Remove rows `rows` (the others keep their order)."""
        gone = set(rows)
        self.select([i for i in range(len(self)) if i not in gone])

    @classmethod
    def merge(cls, histories: Sequence[TokenHistory]) -> TokenHistory:
        """One history with the rows of every history in turn (new requests joining a batch);
        the inputs are left as they were."""
        merged = cls.__new__(cls)
        merged.seen = torch.cat([h.seen for h in histories])
        merged.counts = torch.cat([h.counts for h in histories])
        return merged

    def penalize(
        self, logits: Tensor, gen: GenerationConfig, rows: Tensor | slice | None = None
    ) -> Tensor:
        """`gen`'s penalties on (b, V) logits of history rows `rows` (None: all), float32:

            repetition (CTRL):  l_v / r if l_v > 0 else l_v * r,   for every v with seen = 1
            presence (OpenAI):  l_v - alpha_p * 1[c_v > 0]
            frequency (OpenAI): l_v - alpha_f * c_v

        Without penalties in `gen` the logits come back unchanged (as float32)."""
        logits = logits.float()
        if not gen.uses_penalties:
            return logits
        seen, counts = self.seen, self.counts
        if rows is not None:
            seen, counts = seen[rows], counts[rows]
        return apply_penalties(logits, gen, seen, counts)


def reference_penalties(
    logits: list[float], gen: GenerationConfig, prompt: Sequence[int], output: Sequence[int]
) -> list[float]:
    """The penalty rules token by token in plain Python, for one row: the formulas of
    `TokenHistory.penalize` applied to the logits of a row whose prompt is `prompt` and whose
    generated tokens so far are `output` (the reference the batched history is tested against)."""
    seen = set(prompt) | set(output)
    out = []
    for v, value in enumerate(logits):
        c = sum(1 for t in output if t == v)
        if v in seen:
            r = gen.repetition_penalty
            value = value / r if value > 0 else value * r
        if c > 0:
            value -= gen.presence_penalty
        value -= gen.frequency_penalty * c
        out.append(value)
    return out
