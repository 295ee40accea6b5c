"""The one training loop, its optimizer and schedule, and checkpoints."""

from lmforge.train.loop import TrainingError, TrainResult, evaluate_loss, fit
from lmforge.train.optim import build_optimizer, get_lr, param_groups

__all__ = [
    "TrainResult",
    "TrainingError",
    "build_optimizer",
    "evaluate_loss",
    "fit",
    "get_lr",
    "param_groups",
]
