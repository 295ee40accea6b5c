"""BERT's pretraining objective: masked-LM plus next-sentence prediction.

L = L_MLM + L_NSP
L_MLM = -(1/M) sum_{i selected} log P(x_i | corrupted input)   (the M selected tokens, 15%)
L_NSP = -(1/B) sum_b log P(IsNext/NotNext label_b | pooled [CLS]_b)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lmforge.objectives.lm import LossOutput, scored_cross_entropy, share


def mlm_nsp_loss(model, batch: dict[str, Tensor]) -> LossOutput:
    """MLM cross-entropy on the selected tokens plus NSP cross-entropy on the pooled [CLS].

    The batch holds `input_ids`, `attention_mask`, `token_type_ids`, `labels` (original ids at
    selected positions, IGNORE elsewhere) and `nsp_labels` (0 = IsNext, 1 = NotNext). A model
    without an "nsp" head (or a batch without `nsp_labels`) trains on MLM alone.

    Metrics: `mlm_loss`, `mlm_acc` (share of selected tokens predicted exactly), and with NSP
    `nsp_loss`, `nsp_acc` (0-d tensors: nothing is read on the host). `n_tokens` is the number
    of selected tokens; a batch with none gives a zero MLM loss.
    """
    out = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        token_type_ids=batch.get("token_type_ids"),
    )
    mlm, n, hits = scored_cross_entropy(out.logits, batch["labels"])  # no host sync
    metrics = {"mlm_loss": mlm.detach(), "mlm_acc": share(hits, n)}
    loss = mlm
    if out.nsp_logits is not None and "nsp_labels" in batch:
        nsp_labels = batch["nsp_labels"]
        nsp = F.cross_entropy(out.nsp_logits.float(), nsp_labels)
        metrics["nsp_loss"] = nsp.detach()
        metrics["nsp_acc"] = (out.nsp_logits.argmax(-1) == nsp_labels).float().mean()
        loss = mlm + nsp
    return LossOutput(loss, n, metrics)


mlm_nsp_loss.perplexity = False  # the summed MLM + NSP loss is no per-token loss: no eval_ppl
