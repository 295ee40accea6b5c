"""BERT's pretraining objective: masked-LM plus next-sentence prediction.

L = L_MLM + L_NSP
L_MLM = -(1/M) sum_{i selected} log P(x_i | corrupted input)   (the M selected tokens, 15%)
L_NSP = -(1/B) sum_b log P(IsNext/NotNext label_b | pooled [CLS]_b)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lmforge.objectives.lm import IGNORE, LossOutput, cross_entropy


def mlm_nsp_loss(model, batch: dict[str, Tensor]) -> LossOutput:
    """MLM cross-entropy on the selected tokens plus NSP cross-entropy on the pooled [CLS].

    The batch holds `input_ids`, `attention_mask`, `token_type_ids`, `labels` (original ids at
    selected positions, IGNORE elsewhere) and `nsp_labels` (0 = IsNext, 1 = NotNext). A model
    without an "nsp" head (or a batch without `nsp_labels`) trains on MLM alone.

    Metrics: `mlm_loss`, `mlm_acc` (share of selected tokens predicted exactly), and with NSP
    `nsp_loss`, `nsp_acc`. `n_tokens` is the number of selected tokens.
    """
    out = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        token_type_ids=batch.get("token_type_ids"),
    )
    labels = batch["labels"]
    selected = labels != IGNORE
    n = int(selected.sum())
    if n:
        mlm = cross_entropy(out.logits, labels)
        mlm_acc = float((out.logits.argmax(-1)[selected] == labels[selected]).float().mean())
    else:  # nothing selected in this batch: a zero that still has a graph
        mlm, mlm_acc = out.logits.sum() * 0.0, 0.0
    metrics = {"mlm_loss": float(mlm.detach()), "mlm_acc": mlm_acc}
    loss = mlm
    if out.nsp_logits is not None and "nsp_labels" in batch:
        nsp_labels = batch["nsp_labels"]
        nsp = F.cross_entropy(out.nsp_logits.float(), nsp_labels)
        metrics["nsp_loss"] = float(nsp.detach())
        metrics["nsp_acc"] = float((out.nsp_logits.argmax(-1) == nsp_labels).float().mean())
        loss = mlm + nsp
    return LossOutput(loss, n, metrics)


mlm_nsp_loss.perplexity = False  # the summed MLM + NSP loss is no per-token loss: no eval_ppl
