"""The two model calls of decoding, gpt-fast style: `prefill` the prompt, then
`decode_one_token` again and again against the preallocated KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from lmforge.generate.inputs import EncoderState
from lmforge.models.cache import KVCache

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationOutput:
    """One returned sequence.

    Attributes:
        tokens: the new tokens, without the prompt and without the EOS token.
        text: the decoded tokens, cut before a stop string (only when a tokenizer was given).
        finish_reason: "stop" (EOS or a stop string) or "length" (max_new_tokens reached).
        score: the beam score sum(logprob) / len^length_penalty (beam search only).
        prompt_index: which prompt this sequence continues.
    """

    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: FinishReason = "length"
    score: float | None = None
    prompt_index: int = 0


@dataclass
class GenerationStats:
    """How fast a generation ran, as a user sees it.

    Attributes:
        prompt_tokens: prompt tokens of every row.
        new_tokens: tokens generated (EOS not counted).
        ttft_s: time to first token: from the start (prefill included) to the first token.
        total_s: from the start to the last token.
        steps: decode steps after the first token.
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    steps: int = 0
    rows: int = 1

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second, the whole run (prefill included)."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first: rows * steps / (total - time to first token)."""
        dt = self.total_s - self.ttft_s
        return self.steps * self.rows / dt if dt > 0 else 0.0

    def summary(self) -> str:
        """One line: tokens, time, tokens/s, time to first token, the decode rate."""
        line = (
            f"{self.new_tokens} tokens in {self.total_s:.2f} s ({self.tokens_per_s:.1f} tokens/s); "
            f"time to first token {self.ttft_s * 1000:.0f} ms ({self.prompt_tokens} prompt tokens)"
        )
        if self.steps:
            line += f"; decoding {self.decode_tokens_per_s:.1f} tokens/s"
        return line


def _forward(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    cache: KVCache,
    encoder: EncoderState | None,
    last_only: bool,
) -> Tensor:
    if encoder is None:
        out = model(ids, attention_mask=mask, cache=cache, last_only=last_only)
    else:
        out = model(
            encoder.source,
            attention_mask=encoder.mask,
            decoder_input_ids=ids,
            decoder_attention_mask=mask,
            encoder_hidden=encoder.hidden,
            cache=cache,
            last_only=last_only,
        )
    return out.logits


def prefill(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    cache: KVCache,
    encoder: EncoderState | None = None,
) -> Tensor:
    """Run the whole (left-padded) prompt once, writing its keys/values into `cache`.

    Args:
        input_ids: (B, T) prompt ids (the start token for an encoder-decoder).
        attention_mask: (B, T) 1 = token, 0 = padding.
        cache: an empty KV cache with room for the prompt and the new tokens.
        encoder: the encoder state of an encoder-decoder, else None.

    Returns:
        (B, V) float32 logits of the next token.
    """
    return _forward(model, input_ids, attention_mask, cache, encoder, True)[:, -1].float()


def decode_one_token(
    model: nn.Module,
    token: Tensor,
    cache: KVCache,
    encoder: EncoderState | None = None,
    step=None,
) -> Tensor:
    """One decoding step: (B, 1) newest tokens at the next cache slot -> (B, V) next logits.

    The model's own decode step (`Transformer.decode_step`): positions, the cache slot and the
    padding come from `cache` (recorded at prefill), so nothing is checked on the host; `step`
    is a compiled `Transformer.step` (`lmforge.generate.static.compiled_step`) or None.
    """
    if encoder is None:
        return model.decode_step(token, cache, step=step)
    return model.decode_step(token, cache, encoder.hidden, encoder.mask, step)


def verify_tokens(
    model: nn.Module, tokens: Tensor, attention_mask: Tensor, cache: KVCache
) -> Tensor:
    """Several tokens at once (speculative verification): (B, T) -> (B, T, V) float32 logits."""
    return _forward(model, tokens, attention_mask, cache, None, False).float()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while generating; the model's train/eval state is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
