"""Held-out scores of the qa and choice tasks (what `score_records` reports for them).

qa      every window through the model; per example the best span over its windows
        (`lmforge.data.qa.best_answers`); SQuAD exact match and F1 (0-100) against all of
        its gold answers ("" for an unanswerable one), `loss` (mean over windows),
        `has_answer_*` / `no_answer_*` splits when some questions are unanswerable, and the
        first 5 predictions as samples.
choice  accuracy (0-1) of argmax over the options, `loss` (mean CE), n.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.evaluate.gen_metrics import exact_match, token_f1
from lmforge.objectives.tasks import (
    choice_scores,
    model_inputs,
    span_logits,
    span_or_choice_loss,
)


@torch.no_grad()
def score_qa_or_choice(model, info: dict[str, Any], records, features, batches) -> dict[str, Any]:
    """Scores of the module docstring.

    Args:
        model: the fine-tuned model (eval mode).
        info: task.json's content (task, and for qa max_answer_len, unanswerable).
        records: the checked records; features: their encoding (`encode`), in the same order
            as `batches` yields them (`TaskBatches.sequential()`).
    """
    device = next(model.parameters()).device
    task = info["task"]
    total, n = 0.0, 0
    starts: list[list[float]] = []
    ends: list[list[float]] = []
    picks: list[int] = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**model_inputs(batch)).logits
        out = span_or_choice_loss(task, logits, batch)
        count = int(out.n_tokens)
        total, n = total + float(out.loss) * count, n + count
        if task == "qa":
            s, e = span_logits(logits, batch["attention_mask"])
            starts += s.tolist()
            ends += e.tolist()
        else:
            picks += choice_scores(logits, batch["choice_mask"]).argmax(-1).tolist()
    loss = total / max(n, 1)
    if task == "choice":
        right = sum(p == r["label"] for p, r in zip(picks, records, strict=True))
        return {"accuracy": right / len(records), "loss": loss, "n": len(records)}
    from lmforge.data.qa import best_answers

    preds = best_answers(records, features, starts, ends,
                         max_answer_len=int(info.get("max_answer_len", 30)),
                         allow_null=bool(info.get("unanswerable")))  # fmt: skip
    golds = [r["answers"]["text"] or [""] for r in records]
    scores: dict[str, Any] = {
        "exact_match": exact_match(preds, golds),
        "f1": token_f1(preds, golds),
        "loss": loss,
        "n": len(records),
        "windows": len(features),
    }
    for name, keep in (("has_answer", True), ("no_answer", False)):
        idx = [i for i, r in enumerate(records) if bool(r["answers"]["text"]) == keep]
        if idx and len(idx) < len(records):
            scores[f"{name}_exact_match"] = exact_match([preds[i] for i in idx],
                                                        [golds[i] for i in idx])  # fmt: skip
            scores[f"{name}_f1"] = token_f1([preds[i] for i in idx], [golds[i] for i in idx])
    scores["samples"] = [
        {"question": r["question"], "answers": g, "prediction": p}
        for r, g, p in zip(records[:5], golds[:5], preds[:5], strict=True)
    ]
    return scores
