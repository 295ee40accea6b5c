"""The encoder-decoder objective: predict the target given the source, teacher-forced.

P(y | x) = prod_t P(y_t | y_<t, x);  L = -(1/N) sum_t log P(y_t | y_<t, x)  over the N target
tokens that are not IGNORE (padding).
"""

from __future__ import annotations

from torch import Tensor

from lmforge.objectives.lm import IGNORE, LossOutput, cross_entropy


def seq2seq_loss(model, batch: dict[str, Tensor]) -> LossOutput:
    """Cross-entropy of `labels` (target + EOS) given `input_ids` (source) and
    `decoder_input_ids` ([decoder_start] + target).

    Metrics: `token_acc`, the share of target tokens whose most likely prediction is right.
    """
    out = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=batch.get("decoder_attention_mask"),
    )
    labels = batch["labels"]
    valid = labels != IGNORE
    loss = cross_entropy(out.logits, labels)
    acc = float((out.logits.argmax(-1)[valid] == labels[valid]).float().mean())
    return LossOutput(loss, int(valid.sum()), {"token_acc": acc})
