"""The generation engine: greedy and sampled decoding of a batch of prompts.

    prompts -> left-pad + mask -> prefill (fills the KV cache) -> logits
    repeat:  logits -> processors -> argmax or sample -> token -> stop? -> decode step

The decode step is the model's own (`Transformer.decode_step`: tensor positions and cache slot,
no host syncs, compiled as one graph with `compile=True`, see `lmforge.generate.static`).

Each row (`lmforge.generate.rows.Row`) stops on its own: at the EOS token (which is not
returned), at a stop string (the text is cut before it), or after `max_new_tokens`. Rows that
stopped keep riding along in the batch, their outputs ignored, until every row is done.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import (
    GenerationOutput,
    GenerationStats,
    decode_one_token,
    eval_mode,
    prefill,
)
from lmforge.generate.inputs import as_prompts, check_model, model_device, resolve_eos, start
from lmforge.generate.rows import TokenHistory, expand_index, make_rows, stop_strings
from lmforge.generate.sampling import make_generator, select_next
from lmforge.generate.static import step_function

Prompts = list[list[int]] | list[int] | Tensor


class SamplingRun:
    """Greedy or sampled decoding, one step per iteration of `steps()`.

    After the run, `outputs` holds one `GenerationOutput` per returned sequence, prompt-major
    (prompt i's `num_return_sequences` samples are consecutive).
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: Prompts,
        gen: GenerationConfig,
        tokenizer: Any = None,
        compile: bool | str = False,
    ) -> None:
        check_model(model)
        if gen.num_beams > 1:
            raise GenerationError(
                "SamplingRun decodes with num_beams=1; use beam_search for beams."
            )
        self.model, self.gen = model, gen
        self.prompts = as_prompts(input_ids, model.cfg.vocab_size)
        n = gen.num_return_sequences
        self.rows = make_rows(gen, resolve_eos(model, gen), len(self.prompts), tokenizer)
        self.compile = compile
        self.stats = GenerationStats(prompt_tokens=sum(len(p) for p in self.prompts) * n)

    @property
    def outputs(self) -> list[GenerationOutput]:
        """One `GenerationOutput` per returned sequence, prompt-major."""
        return [row.output() for row in self.rows]

    def steps(self) -> Iterator[list[int | None]]:
        """Yield, after each step, every row's new token (None once a row has finished)."""
        with eval_mode(self.model):
            yield from self._steps()

    def _steps(self) -> Iterator[list[int | None]]:
        stats, t0 = self.stats, time.perf_counter()
        stats.rows = len(self.rows)
        try:
            for i, new in enumerate(self._decode()):
                now = time.perf_counter() - t0
                if i == 0:
                    stats.ttft_s = now
                else:
                    stats.steps += 1
                stats.total_s = now
                stats.new_tokens += sum(t is not None for t in new)
                yield new
        finally:
            stats.total_s = stats.total_s or time.perf_counter() - t0

    @torch.inference_mode()
    def _decode(self) -> Iterator[list[int | None]]:
        model, gen = self.model, self.gen
        device = model_device(model)
        begin = start(model, self.prompts, gen)
        batch, n = len(self.prompts), gen.num_return_sequences
        cache = model.new_cache(batch, begin.cache_len)
        logits = prefill(model, begin.ids, begin.mask, cache, begin.encoder)  # (B, V)
        encoder = begin.encoder
        history = None
        if gen.uses_penalties:
            history = TokenHistory(begin.history, model.cfg.vocab_size, device)
        if n > 1:  # prefill once per prompt, then copy the cache for each sample
            index = expand_index([n] * batch, device)
            logits = logits[index]
            cache.reorder(index)
            encoder = encoder.select(index) if encoder is not None else None
            if history is not None:
                history.select(index)
        step = step_function(model, self.compile)
        generator = make_generator(gen.seed, device)
        for _ in range(gen.max_new_tokens):
            token = select_next(logits, gen, generator, history)  # (N,)
            yield self._record(token.tolist())
            if all(row.done for row in self.rows):  # a row ends at its budget at the latest
                break
            if history is not None:
                history.add(token)
            logits = decode_one_token(model, token[:, None], cache, encoder, step)

    def _record(self, tokens: list[int]) -> list[int | None]:
        """Give each live row its token; None for rows that had ended or end on EOS."""
        return [row.take(tok) for row, tok in zip(self.rows, tokens, strict=True)]


def finish_texts(outputs: list[GenerationOutput], gen: GenerationConfig, tokenizer: Any) -> None:
    """Decode each output; cut text and tokens before a stop string (a cut output ends with
    finish_reason "stop": beams are searched without stop strings and cut here)."""
    stops = stop_strings(gen, tokenizer)
    for out in outputs:
        if stops is None:
            out.text = tokenizer.decode(out.tokens, skip_special_tokens=True)
            continue
        tokens, out.text = stops.cut(out.tokens)
        if len(tokens) < len(out.tokens):
            out.tokens, out.finish_reason = tokens, "stop"


def generate_outputs(
    model: nn.Module,
    input_ids: Prompts,
    gen: GenerationConfig,
    tokenizer: Any = None,
    compile: bool | str = False,
) -> list[GenerationOutput]:
    """Like `generate`, with text (given a tokenizer), finish reasons and beam scores.

    Beam search has no stop strings of its own: with a tokenizer, the beams are searched as if
    there were none, then each is cut before its first stop string (`finish_texts`)."""
    if gen.num_beams > 1:
        from lmforge.generate.beam import beam_search

        search = replace(gen, stop=[]) if tokenizer is not None else gen
        outputs = beam_search(model, input_ids, search, compile=compile)
    else:
        run = SamplingRun(model, input_ids, gen, tokenizer, compile)
        for _ in run.steps():
            pass
        outputs = run.outputs
    if tokenizer is not None:
        finish_texts(outputs, gen, tokenizer)
    return outputs


def generate(
    model: nn.Module,
    input_ids: Prompts,
    gen: GenerationConfig | None = None,
    tokenizer: Any = None,
    compile: bool | str = False,
) -> list[list[int]]:
    """Generate new tokens for each prompt.

    Args:
        model: a decoder or encoder-decoder `Transformer` with an LM head.
        input_ids: prompts as lists of ids (any lengths; they are left-padded) or a (B, T)
            tensor; for an encoder-decoder these are the source sequences.
        gen: decoding settings (default `GenerationConfig()`).
        tokenizer: needed only for stop strings.
        compile: torch.compile the model's decode step: True (the default mode), "whole" (one
            graph, frozen weights) or "regional" (one compiled run of blocks shared by the stack),
            see `lmforge.generate.static`; the first call per model and batch size compiles
            (tens of seconds).

    Returns:
        The new tokens of every returned sequence (EOS not included), prompt-major: prompt i's
        `num_return_sequences` outputs are consecutive.
    """
    gen = gen or GenerationConfig()
    return [o.tokens for o in generate_outputs(model, input_ids, gen, tokenizer, compile)]


def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str] | str,
    gen: GenerationConfig | None = None,
    compile: bool | str = False,
) -> list[str]:
    """Text in, text out: encode each prompt, generate, decode (cut before stop strings)."""
    gen = gen or GenerationConfig()
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    return [o.text or "" for o in generate_outputs(model, ids, gen, tokenizer, compile)]


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """The prompt's ids as the model's own tokenizer encodes a text, as Hugging Face's
    `tokenizer(text)` does: its post-processor adds exactly its markers (a Llama tokenizer from
    Hugging Face or GGUF puts BOS in front, GPT-2's adds nothing, an lmforge-trained BPE
    tokenizer starts with <|bos|> as in pretraining). WordPiece's [CLS] ... [SEP] frame is for
    encoders and is left out. An empty prompt starts from BOS, else EOS (a document boundary).

    One encoding for the Python API, `lmforge generate`, `lmforge chat` and the server."""
    kind = getattr(tokenizer, "kind", None)
    if "add_special_tokens" in inspect.signature(tokenizer.encode).parameters:
        ids = list(tokenizer.encode(text, add_special_tokens=kind != "wordpiece"))
    else:
        ids = list(tokenizer.encode(text))
    if ids:
        return ids
    for first in (getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)):
        if first is not None:
            return [first]
    raise GenerationError(
        "the prompt is empty and the tokenizer has no BOS or EOS token to start from; "
        "give some prompt text."
    )
