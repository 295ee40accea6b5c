"""The encoder-decoder objective: predict the target given the source, teacher-forced.

P(y | x) = prod_t P(y_t | y_<t, x);  L = -(1/N) sum_t log P(y_t | y_<t, x)  over the N target
tokens that are not IGNORE (padding).
"""

from __future__ import annotations

from torch import Tensor

from lmforge.objectives.lm import LossOutput, scored_cross_entropy, share


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
    loss, n, hits = scored_cross_entropy(out.logits, batch["labels"])  # no host sync
    return LossOutput(loss, n, {"token_acc": share(hits, n)})
