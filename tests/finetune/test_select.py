"""`fit` keeps the best model by any evaluation number (min or max) and stops on patience."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.errors import ConfigError
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.train import TrainingError, fit


class Scripted:
    """Causal-LM loss; on held-out data also a scripted `score`, one value per evaluation."""

    def __init__(self, scores):
        self.scores = list(scores)

    def __call__(self, model, batch):
        out = causal_lm_loss(model, batch)
        if not model.training:
            out.metrics["score"] = self.scores.pop(0)
        return out


def run(tmp_path, scores, **cfg):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64))
    data = TokenWindows(np.tile(np.arange(5, 40), 20).astype(np.uint16), 16, 4)
    config = TrainConfig(max_steps=6, eval_every=1, warmup_steps=1, device="cpu",
                         precision="fp32", **cfg)  # fmt: skip
    return fit(model, Scripted(scores), data, lambda: data.sequential(1), config, tmp_path,
               progress=False)  # fmt: skip


def test_best_by_a_metric_to_maximise_and_patience(tmp_path):
    r = run(tmp_path, [0.1, 0.5, 0.3, 0.4, 0.2], select_metric="eval_score", select_mode="max",
            patience=3)  # fmt: skip
    assert r.best_score == 0.5 and r.stopped_early and r.steps == 5
    assert r.best_eval_loss is not None
    r = run(tmp_path / "min", [0.3, 0.2, 0.4, 0.1, 0.9, 0.9], select_metric="eval_score")
    assert r.best_score == 0.1 and not r.stopped_early and r.steps == 6


def test_select_metric_mistakes(tmp_path):
    with pytest.raises(TrainingError, match="select_metric 'eval_nope' is not among"):
        run(tmp_path, [0.1] * 6, select_metric="eval_nope")
    with pytest.raises(ConfigError, match="must name an evaluation number"):
        TrainConfig(select_metric="accuracy")
