"""Streaming a text of any length through a model at constant memory.

With attention sinks (StreamingLLM) the cache keeps the first `sinks` tokens and the `window`
most recent ones; every new token is scored against that cache, so memory stays fixed however
long the stream. The perplexity over the whole stream shows whether quality holds up:

    PPL = exp( -(1/N) sum_t log P(x_t | sinks, x_{t-window..t-1}) )
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.models import Transformer


@dataclass
class StreamResult:
    tokens: int
    ppl: float
    ppl_by_segment: list[tuple[int, float]]  # (tokens so far, perplexity of that segment)
    cache_slots: int  # the cache's size, constant during the stream
    peak_cache_bytes: int


def streaming_perplexity(
    model: Transformer,
    tokens: np.ndarray,
    window: int,
    sinks: int = 4,
    chunk: int = 1,
    segments: int = 10,
) -> StreamResult:
    """Score `tokens` left to right through a rolling cache of `sinks + window` slots.

    Args:
        chunk: tokens fed per forward (1 = token by token; larger is faster and sees the same
            keys up to the window rule inside a chunk); must not exceed `window`.
        segments: how many equal parts to report the perplexity of.
    """
    chunk = max(1, min(chunk, window))
    device = next(model.parameters()).device
    cache = model.new_cache(1, 0, window=window, sinks=sinks)
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)[None]
    n = ids.size(1) - 1
    nll = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for at in range(0, n, chunk):
            x = ids[:, at : min(at + chunk, n)]
            logits = model(x, cache=cache).logits[0].float()  # (t, V)
            target = ids[0, at + 1 : at + 1 + x.size(1)]
            nll[at : at + x.size(1)] = (
                torch.nn.functional.cross_entropy(logits, target, reduction="none").double().cpu()
            )
    bounds = np.linspace(0, n, segments + 1).astype(int)
    by_segment = [
        (int(b), math.exp(float(nll[a:b].mean())))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    return StreamResult(
        tokens=n,
        ppl=math.exp(float(nll.mean())),
        ppl_by_segment=by_segment,
        cache_slots=cache.max_len,
        peak_cache_bytes=cache.nbytes,
    )
