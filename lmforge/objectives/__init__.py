"""Losses: each objective maps (model, batch) to a loss and the metrics it logs."""

from lmforge.objectives.lm import LossOutput, causal_lm_loss, cross_entropy

__all__ = ["LossOutput", "causal_lm_loss", "cross_entropy"]
