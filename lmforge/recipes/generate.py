"""Text in, text out: load a checkpoint and its tokenizer, then generate."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lmforge.errors import GenerationError
from lmforge.generate import GenerationConfig, generate
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.tokenizer import Tokenizer


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """[BOS] + tokens of the prompt: a prompt starts a document, as in pretraining."""
    ids = tokenizer.encode(prompt) if prompt else []
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if start is not None:
        ids = [start, *ids]
    if not ids:
        raise GenerationError(
            "the prompt is empty and the tokenizer has no BOS/EOS to start from; pass --prompt."
        )
    return ids


class EmptyOutputWarning(UserWarning):
    """A generated output holds no visible text; the message says why and what to try."""


def explain_empty(tokenizer: Tokenizer, tokens: list[int], max_new_tokens: int) -> str | None:
    """One sentence on why `tokens` (new tokens, EOS removed) show no text; None if they do."""
    if tokenizer.decode(tokens).strip():
        return None
    template = getattr(tokenizer, "chat_template", None)
    hint = (
        " This tokenizer has a chat template, so it is likely an instruct model: talk to it "
        "through its template (`lmforge chat MODEL_DIR`)."
        if template
        else " A base model may need a longer prompt, a higher --temperature or more training."
    )
    if not tokens:
        return "the model ended at once (its first token was end-of-sequence)." + hint
    if len(tokens) < max_new_tokens:
        return (
            f"the model wrote only {len(tokens)} whitespace token(s), then end-of-sequence." + hint
        )
    return f"the model wrote only whitespace for all {len(tokens)} new tokens." + hint


def generate_from_dir(
    model_dir: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    num_return_sequences: int = 1,
    seed: int | None = None,
    stop: list[str] | None = None,
    compile: bool = False,
) -> list[str]:
    """Continue `prompt` with the model in `model_dir`; returns the new text of each sequence."""
    model, tok = load_model_and_tokenizer(model_dir)  # a PEFT run's dir: with its adapter
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=1.0 if top_p is None else top_p,
        num_return_sequences=num_return_sequences,
        seed=seed,
        stop=stop or [],
    )
    ids = prompt_ids(tok, prompt)
    with torch.no_grad():
        outputs = generate(model, [ids], gen, tokenizer=tok, compile=compile)
    for out in outputs:
        notice = explain_empty(tok, list(out), max_new_tokens)
        if notice is not None:
            warnings.warn(notice, EmptyOutputWarning, stacklevel=2)
    return [tok.decode(out) for out in outputs]
