"""Text in, text out: load a checkpoint and its tokenizer, then generate."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import CheckpointError, GenerationError
from lmforge.generate import GenerationConfig, SamplingRun, generate_outputs, speculative_outputs
from lmforge.generate.core import GenerationOutput, GenerationStats
from lmforge.generate.engine import encode_prompt, finish_texts
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat import chat_stops, encode_chat


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt as the model's tokenizer encodes it (`lmforge.generate.encode_prompt`)."""
    return encode_prompt(tokenizer, prompt)


@dataclass
class GenerateResult:
    """What `generate_from_dir` returns besides the texts.

    Attributes:
        texts: the new text of each sequence.
        stats: speed (tokens/s, time to first token).
        acceptance: accepted / proposed draft tokens (speculative decoding), else None.
    """

    texts: list[str]
    stats: GenerationStats
    acceptance: float | None = None


class EmptyOutputWarning(UserWarning):
    """A generated output holds no visible text; the message says why and what to try."""


def explain_empty(
    tokenizer: Tokenizer,
    tokens: list[int],
    max_new_tokens: int,
    chat: bool = False,
    stop: list[str] | None = None,
) -> str | None:
    """One sentence on why `tokens` (new tokens, EOS removed, cut before a stop string) show
    no text; None if they do. `chat`: the prompt already went through the chat template;
    `stop`: the caller's stop strings, which may have cut the text."""
    if tokenizer.decode(tokens).strip():
        return None
    if stop and len(tokens) < max_new_tokens:
        return (
            "the output is empty: a --stop string came before any other text, or the model "
            "ended at once; run without --stop to see the whole output."
        )
    template = getattr(tokenizer, "chat_template", None)
    hint = (
        " This tokenizer has a chat template, so it is likely an instruct model: try --chat "
        "(or `lmforge chat MODEL_DIR`)."
        if template and not chat
        else " A base model may need a longer prompt, a higher --temperature or more training."
    )
    if not tokens:
        return "the model ended at once (its first token was end-of-sequence)." + hint
    if len(tokens) < max_new_tokens:
        return (
            f"the model wrote only {len(tokens)} whitespace token(s), then end-of-sequence." + hint
        )
    return f"the model wrote only whitespace for all {len(tokens)} new tokens." + hint


def load_draft(draft_dir: str | Path, tokenizer: Tokenizer) -> nn.Module:
    """The draft model of speculative decoding from `draft_dir`, checked first: it must be a
    decoder model dir whose tokenizer maps every token to the same id as the target's
    `tokenizer` (draft ids are fed to the target as they are)."""
    draft_dir = Path(draft_dir)
    if not (draft_dir / "config.json").is_file():
        raise CheckpointError(
            f"the draft {draft_dir} is not a model dir (no config.json); pass --draft the dir "
            "of a small model trained with the same tokenizer."
        )
    model, draft_tok = load_model_and_tokenizer(draft_dir)
    mine, theirs = tokenizer.backend.get_vocab(), draft_tok.backend.get_vocab()
    if mine != theirs:
        differ = len(set(mine.items()) ^ set(theirs.items()))
        raise GenerationError(
            f"the draft {draft_dir} has a different tokenizer ({differ} token-id pairs differ "
            "from the target's); speculative decoding needs a draft with the same tokenizer."
        )
    return model


def decode(
    model: nn.Module,
    ids: list[int],
    gen: GenerationConfig,
    tokenizer: Tokenizer,
    draft: nn.Module | None = None,
    draft_k: int = 4,
    compile: bool | str = False,
) -> tuple[list[GenerationOutput], GenerationStats, float | None]:
    """Decode one prompt the way `gen` asks: speculative with a `draft` model (k = `draft_k`),
    beam search when `gen.num_beams` > 1, else greedy or sampled.

    Beam search cuts each beam before its first stop string (`generate_outputs`).

    Returns:
        (outputs with their text, speed, draft acceptance = accepted / proposed or None).
    """
    acceptance = None
    t0 = time.perf_counter()
    with torch.no_grad():
        if draft is not None:
            if gen.num_beams > 1:
                raise GenerationError(
                    "--draft (speculative decoding) samples or decodes greedily; drop "
                    "--num-beams or --draft."
                )
            outputs, spec = speculative_outputs(model, draft, [ids], gen, draft_k, tokenizer)
            acceptance = spec.accepted / spec.proposed if spec.proposed else 0.0
        elif gen.num_beams > 1:
            outputs = generate_outputs(model, [ids], gen, tokenizer, compile)
        else:
            run = SamplingRun(model, [ids], gen, tokenizer, compile)
            for _ in run.steps():
                pass
            outputs = run.outputs
            finish_texts(outputs, gen, tokenizer)
            return outputs, run.stats, None  # its own timing: first token separately
    total = time.perf_counter() - t0  # the whole text arrives at the end
    new = sum(len(o.tokens) for o in outputs)
    return outputs, GenerationStats(len(ids), new, ttft_s=total, total_s=total), acceptance


def generate_from_dir(
    model_dir: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float = 0.0,
    num_return_sequences: int = 1,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    compile: bool | str = False,
    draft: str | Path | None = None,
    draft_k: int = 4,
    chat: bool = False,
    return_stats: bool = False,
) -> list[str] | GenerateResult:
    """Continue `prompt` with the model in `model_dir`; returns the new text of each sequence
    (with `return_stats`, a `GenerateResult`: texts, speed, draft acceptance).

    num_beams > 1: beam search; draft: a smaller model dir with the same tokenizer that proposes
    `draft_k` tokens per round (speculative decoding, see `load_draft`); the penalties are
    `GenerationConfig`'s; chat: the prompt is one user message under the tokenizer's chat
    template.
    """
    model, tok = load_model_and_tokenizer(model_dir)  # a PEFT run's dir: with its adapter
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=1.0 if top_p is None else top_p,
        min_p=min_p,
        num_return_sequences=num_return_sequences,
        num_beams=num_beams,
        length_penalty=length_penalty,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        seed=seed,
        stop=(stop or []) + (chat_stops(tok) if chat else []),
    )
    ids = (
        encode_chat(tok, [{"role": "user", "content": prompt}]) if chat else prompt_ids(tok, prompt)
    )
    draft_model = load_draft(draft, tok) if draft is not None else None
    outputs, stats, acceptance = decode(model, ids, gen, tok, draft_model, draft_k, compile)
    for out in outputs:
        notice = explain_empty(tok, list(out.tokens), max_new_tokens, chat, stop)
        if notice is not None:
            warnings.warn(notice, EmptyOutputWarning, stacklevel=2)
    texts = [out.text or "" for out in outputs]
    if not return_stats:
        return texts
    return GenerateResult(texts, stats, acceptance)
