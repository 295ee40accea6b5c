"""Losses: each objective maps (model, batch) to a loss and the metrics it logs."""

from lmforge.objectives.lm import IGNORE, LossOutput, causal_lm_loss, cross_entropy
from lmforge.objectives.mlm import mlm_nsp_loss
from lmforge.objectives.seq2seq import seq2seq_loss

__all__ = [
    "IGNORE",
    "LossOutput",
    "causal_lm_loss",
    "cross_entropy",
    "mlm_nsp_loss",
    "seq2seq_loss",
]
