"""Text in, text out: load a checkpoint and its tokenizer, then generate."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from lmforge.errors import GenerationError
from lmforge.generate import GenerationConfig, generate
from lmforge.models import Transformer
from lmforge.recipes.finetuned import load_finetuned
from lmforge.tokenizer import Tokenizer


def _load(model_dir: Path) -> tuple[Transformer, Tokenizer]:
    weights = model_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns if weights.exists() else 0
    return _load_cached(str(model_dir.resolve()), stamp)


@lru_cache(maxsize=2)
def _load_cached(model_dir: str, stamp: int) -> tuple[Transformer, Tokenizer]:
    # keyed on the weights' modification time, so a retrained model is never served stale
    # a PEFT run's out dir (base + adapter) generates as its adapted model
    return load_finetuned(model_dir), Tokenizer.load(model_dir)


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
) -> list[str]:
    """Continue `prompt` with the model in `model_dir`; returns the new text of each sequence."""
    model, tok = _load(Path(model_dir))
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
        outputs = generate(model, [ids], gen, tokenizer=tok)
    return [tok.decode(out) for out in outputs]
