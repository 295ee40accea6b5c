"""Training through the one loop: `fit` trains the adapter only, the base stays bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.errors import AdapterError
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.peft import (
    LoRAConfig,
    adapter_parameter_names,
    apply_lora,
    apply_prefix_tuning,
    apply_prompt_tuning,
    count_trainable,
    freeze_all_but_last,
    trainable_report,
)
from lmforge.train import fit


def data(seed: int = 0) -> TokenWindows:
    rng = np.random.default_rng(seed)
    pattern = rng.integers(5, 60, size=37)  # a repeating pattern: learnable in a few steps
    return TokenWindows(
        np.tile(pattern, 100).astype(np.uint16), seq_len=32, batch_size=8, seed=seed
    )


def model(preset: str = "gpt-tiny") -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset(preset, vocab_size=64, dropout=0.0))


def train(m: Transformer, tmp_path, steps: int = 10, lr: float = 1e-2) -> list[float]:
    cfg = TrainConfig(
        max_steps=steps,
        lr=lr,
        warmup_steps=2,
        log_every=1,
        eval_every=1000,
        weight_decay=0.0,
        device="cpu",
        precision="fp32",
    )
    logs: list[dict] = []
    fit(m, causal_lm_loss, data(), None, cfg, tmp_path, progress=False, on_log=logs.append)
    return [r["loss"] for r in logs]


def snapshot(m: Transformer, skip: set[str]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if k not in skip}


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_fit_trains_the_adapter_and_leaves_the_base_bit_identical(tmp_path, method):
    m = model("llama-tiny" if method == "prompt" else "gpt-tiny")
    if method == "lora":
        apply_lora(m, LoRAConfig(r=8, alpha=16, targets=["*_proj"]))
    elif method == "prompt":
        apply_prompt_tuning(m, 8)
    else:
        apply_prefix_tuning(m, 8)
    adapter = set(adapter_parameter_names(m))
    base = snapshot(m, adapter)
    start = {n: p.detach().clone() for n, p in m.named_parameters() if n in adapter}
    losses = train(m, tmp_path, lr=1e-2 if method == "lora" else 0.3)
    # a random base limits what a prompt alone can do; it still learns the unigram shift
    assert losses[-1] < losses[0] - {"lora": 0.3, "prompt": 0.03, "prefix": 0.08}[method]
    for k, v in base.items():
        assert torch.equal(m.state_dict()[k], v), k
    moved = [n for n, p in m.named_parameters() if n in start and not torch.equal(p, start[n])]
    assert sorted(moved) == sorted(start)


def test_last_n_trains_only_the_top_blocks_and_head(tmp_path):
    m = model("llama-tiny")  # untied head
    freeze_all_but_last(m, 1)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {
        n
        for n, _ in m.named_parameters()
        if n.startswith(("decoder.layers.1.", "decoder.norm.", "heads."))
    }
    assert "trainable" in trainable_report(m)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    losses = train(m, tmp_path, steps=5)
    assert losses[-1] < losses[0]
    for n, p in m.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


def test_last_n_keeps_a_tied_head_frozen_unless_asked():
    m = model("gpt-tiny")  # the LM head is the token embedding
    freeze_all_but_last(m, 0)
    assert not m.embed.tok.weight.requires_grad
    assert count_trainable(m) == sum(p.numel() for p in m.decoder.norm.parameters())
    freeze_all_but_last(m, 2, train_tied=True)
    assert m.embed.tok.weight.requires_grad and not m.embed.pos.weight.requires_grad
    with pytest.raises(AdapterError, match="between 0 and 2"):
        freeze_all_but_last(m, 3)
