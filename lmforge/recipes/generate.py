"""Text in, text out: load a checkpoint and its tokenizer, then generate."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.generate import GenerationConfig, SamplingRun
from lmforge.generate.core import GenerationStats
from lmforge.generate.engine import encode_prompt, finish_texts
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.tokenizer import Tokenizer


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt as the model's tokenizer encodes it (`lmforge.generate.encode_prompt`)."""
    return encode_prompt(tokenizer, prompt)


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
    return_stats: bool = False,
) -> list[str] | tuple[list[str], GenerationStats]:
    """Continue `prompt` with the model in `model_dir`; returns the new text of each sequence
    (and, with `return_stats`, the `GenerationStats`: tokens/s, time to first token)."""
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
    run = SamplingRun(model, [ids], gen, tok, compile)
    with torch.no_grad():
        for _ in run.steps():
            pass
    outputs = run.outputs
    finish_texts(outputs, gen, tok)
    texts = [out.text or "" for out in outputs]
    return (texts, run.stats) if return_stats else texts
