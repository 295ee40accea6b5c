"""The training-FLOPs formula against PyTorch's own FLOP counter on the explicit-math path."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge.config import ModelConfig
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.train.flops import matmul_peak_flops, train_flops_per_token


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_formula_matches_the_flop_counter(preset):
    model = Transformer(ModelConfig.from_preset(preset, vocab_size=96))
    model.set_attention_backend("math")  # explicit matmuls, which the counter sees
    b, t = 2, 24
    x = torch.randint(0, 96, (b, t))
    with FlopCounterMode(display=False) as counter:
        causal_lm_loss(model, {"input_ids": x, "labels": x}).loss.backward()
    assert counter.get_total_flops() == pytest.approx(b * t * train_flops_per_token(model, t))


def test_peak_is_a_positive_rate_and_encoders_are_refused():
    assert matmul_peak_flops(torch.device("cpu"), n=64, repeats=2) > 0
    with pytest.raises(ValueError, match="decoder-only"):
        train_flops_per_token(Transformer(ModelConfig.from_preset("bert-tiny")), 16)
