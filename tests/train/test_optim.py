"""The optimizer build: fused AdamW computes the plain (per-parameter loop) AdamW update."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.models import Transformer
from lmforge.train.optim import build_optimizer, fused_supported, param_groups


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    # no biases: a key bias gets a gradient of rounding noise only (softmax ignores it), which
    # Adam's normalisation turns into an update of arbitrary sign in either implementation
    return Transformer(ModelConfig.from_preset("llama-tiny", vocab_size=64))


def _train(model: Transformer, opt: torch.optim.Optimizer, steps: int = 6) -> list[float]:
    gen = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 17), generator=gen)
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


def test_build_optimizer_is_fused_on_cpu_and_matches_plain_adamw():
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    fast_model, plain_model = _model(), _model()
    fast = build_optimizer(fast_model, cfg)
    assert fast.defaults["fused"] is True
    plain = torch.optim.AdamW(
        param_groups(plain_model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        foreach=False,
    )
    fast_losses, plain_losses = _train(fast_model, fast), _train(plain_model, plain)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-6)
    moved = 0.0
    for (name, p), q, p0 in zip(
        fast_model.named_parameters(), plain_model.parameters(), _model().parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((p - p0).abs().max()))
    assert moved > 1e-3  # the updates were real
    for key in ("exp_avg", "exp_avg_sq"):
        for p, q in zip(fast_model.parameters(), plain_model.parameters(), strict=True):
            torch.testing.assert_close(
                fast.state[p][key], plain.state[q][key], rtol=1e-5, atol=1e-7
            )


def test_fused_is_refused_for_mixed_devices_and_integer_tensors():
    assert fused_supported([torch.zeros(2, requires_grad=True)])
    assert not fused_supported([])
    assert not fused_supported([torch.zeros(2, dtype=torch.int64)])
    assert not fused_supported([torch.zeros(2), torch.zeros(2, device="meta")])


def test_clipping_inside_fused_adamw_matches_clip_grad_norm():
    """g / clip_scale(norm, c) in fused AdamW's kernel = clip_grad_norm_(c) then the plain
    per-parameter AdamW loop, over steps whose gradients are clipped (norm > c) and not."""
    from lmforge.train.optim import clip_scale, masked_step

    torch.manual_seed(0)
    fused_params = [torch.nn.Parameter(torch.randn(30, 20)), torch.nn.Parameter(torch.randn(20))]
    plain_params = [torch.nn.Parameter(p.detach().clone()) for p in fused_params]
    fused = torch.optim.AdamW(fused_params, lr=0.05, weight_decay=0.1, fused=True)
    plain = torch.optim.AdamW(plain_params, lr=0.05, weight_decay=0.1, foreach=False)
    norms = []
    for size in (5.0, 0.01, 3.0, 0.02):  # clipped, not clipped, clipped, not clipped
        grads = [torch.randn_like(p) * size for p in fused_params]
        for p, q, g in zip(fused_params, plain_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        norm = torch.nn.utils.get_total_norm([p.grad for p in fused_params])
        masked_step(fused, torch.tensor(False), clip_scale(norm, 1.0))
        norms.append(float(torch.nn.utils.clip_grad_norm_(plain_params, 1.0)))
        plain.step()
        assert float(norm) == pytest.approx(norms[-1], rel=1e-6)
    assert min(norms) < 1.0 < max(norms)
    for p, q in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
