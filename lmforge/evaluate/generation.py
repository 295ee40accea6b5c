"""Score what a fine-tuned SFT / seq2seq model generates: greedy outputs for the prompts (or
sources) of labelled records against their responses (or targets), by
`lmforge.evaluate.gen_metrics.generation_scores` (BLEU, chrF, ROUGE-1/2/L, EM, F1).

    sft prompt/response   input  [BOS] prompt            reference  response
    sft messages          input  the chat rendering up to the last assistant turn
                                 (`lmforge.data.task_batches.sft_segments`)
                                                         reference  the last assistant message
    seq2seq               input  source [EOS] (encoder)  reference  target
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.data.task_batches import sft_segments
from lmforge.evaluate.gen_metrics import generation_scores
from lmforge.generate import GenerationConfig, generate


def _inputs(tokenizer, task: str, record: dict[str, Any], max_len: int) -> tuple[list[int], str]:
    if task == "seq2seq":
        eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        return tokenizer.encode(record["source"])[: max_len - 1] + eos, record["target"]
    segments = sft_segments(tokenizer, record)
    prompt = [i for ids, _ in segments[:-1] for i in ids]
    if "messages" in record:
        reference = [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]
    else:
        reference = record["response"]
    return prompt[-max_len:], reference


@torch.no_grad()
def generation_report(
    model,
    tokenizer,
    task: str,
    records: list[dict[str, Any]],
    max_len: int,
    *,
    limit: int = 200,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Greedy-decode the first `limit` records and score the texts against the references.

    Args:
        model, tokenizer: the fine-tuned model (decoder for sft, encoder-decoder for seq2seq).
        task: "sft" or "seq2seq".
        records: checked records of `lmforge.data.tasks.read_task_file`.
        max_len: the longest input in tokens (longer prompts keep their end, sources their start).
        limit: score at most this many records (generation is the slow part).
        max_new_tokens: tokens generated per example (default: the longest reference + 16,
            at most 256).

    Returns:
        `generation_scores` (0-100 each, and n) plus "samples": the first 5 (input reference,
        prediction) pairs.
    """
    chosen = records[:limit]
    pairs = [_inputs(tokenizer, task, r, max_len) for r in chosen]
    if max_new_tokens is None:
        longest = max(len(tokenizer.encode(ref)) for _, ref in pairs)
        max_new_tokens = min(256, longest + 16)
    room = model.cfg.max_seq_len - max(len(ids) for ids, _ in pairs)
    if task == "sft":
        max_new_tokens = max(1, min(max_new_tokens, room))
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    predictions: list[str] = []
    for at in range(0, len(pairs), batch_size):
        ids = [p[0] for p in pairs[at : at + batch_size]]
        for tokens in generate(model, ids, gen):
            predictions.append(tokenizer.decode(tokens).strip())
    references = [ref for _, ref in pairs]
    scores = generation_scores(predictions, references)
    scores["samples"] = [
        {"reference": r, "prediction": p}
        for r, p in zip(references[:5], predictions[:5], strict=True)
    ]
    return scores
