"""Losses: each objective maps (model, batch) to a loss and the metrics it logs."""

from lmforge.objectives.contrastive import in_batch_contrastive_loss, negative_sampling_loss
from lmforge.objectives.lm import (
    IGNORE,
    CausalLMLoss,
    LossOutput,
    causal_lm_loss,
    cross_entropy,
)
from lmforge.objectives.mlm import mlm_nsp_loss
from lmforge.objectives.seq2seq import seq2seq_loss
from lmforge.objectives.tasks import TaskObjective, balanced_weights, distillation_loss

__all__ = [
    "IGNORE",
    "CausalLMLoss",
    "LossOutput",
    "TaskObjective",
    "balanced_weights",
    "causal_lm_loss",
    "cross_entropy",
    "distillation_loss",
    "in_batch_contrastive_loss",
    "mlm_nsp_loss",
    "negative_sampling_loss",
    "seq2seq_loss",
]
