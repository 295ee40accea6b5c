"""Host syncs: a training step never reads a tensor's value on the host; only log steps do.

On a GPU every Python-level read of a tensor's value (`.item()`, `.tolist()`, `bool(t)`,
`float(t)`, `int(t)`) waits for the device's queue to drain. The CPU cannot show that wait, so
these tests count the reads themselves, step by step.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.train import fit
from lmforge.train import loop as L
from lmforge.train.optim import masked_step

READS = ("item", "tolist", "__bool__", "__float__", "__int__")


def _data():
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(5, 60, size=37), 100).astype(np.uint16)
    return TokenWindows(tokens, seq_len=16, batch_size=4, seed=0)


def _model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64))


@pytest.fixture
def reads(monkeypatch):
    """Every host read of a tensor value during `fit`, as (steps trained so far, inside a
    train step?, how)."""
    seen: list[tuple[int, bool, str]] = []
    where = {"steps": 0, "inside": False}
    real_step = L.train_step

    def counted_step(*args, **kwargs):
        where["inside"] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            where["inside"] = False
            where["steps"] += 1

    monkeypatch.setattr(L, "train_step", counted_step)
    for name in READS:
        real = getattr(torch.Tensor, name)

        def probe(self, *args, _real=real, _name=name, **kwargs):
            seen.append((where["steps"], where["inside"], _name))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, probe)
    return seen


def test_host_reads_tensors_only_on_log_steps(tmp_path, reads):
    cfg = TrainConfig(
        max_steps=9, log_every=3, eval_every=100, warmup_steps=2, device="cpu", precision="fp32"
    )
    fit(_model(), causal_lm_loss, _data(), None, cfg, tmp_path, progress=False)
    assert [r for r in reads if r[1]] == []  # nothing inside a train step
    after_steps = {steps for steps, _, _ in reads if steps > 0}
    assert after_steps == {3, 6, 9}  # the probe does see the reads of log steps


def test_a_bad_step_between_log_steps_is_skipped_on_the_device(tmp_path):
    """A NaN loss on a non-log step: the fused AdamW update is masked on the device, the batch
    is recorded as skipped on the next log step, and the weights end as in a run that reads the
    flag after every step (constant learning rate, so the schedule cannot differ)."""

    def poisoned(model, batch):
        out = causal_lm_loss(model, batch)
        if poisoned.calls == 4:  # the 5th batch, between the log steps 3 and 6
            out.loss = out.loss * float("nan")
        poisoned.calls += 1
        return out

    weights = {}
    for log_every in (3, 1):
        poisoned.calls = 0
        cfg = TrainConfig(
            max_steps=6, log_every=log_every, eval_every=100, warmup_steps=0,
            schedule="constant", lr=3e-3, device="cpu", precision="fp32",
        )  # fmt: skip
        out, model = tmp_path / f"every{log_every}", _model()
        result = fit(model, poisoned, _data(), None, cfg, out, progress=False)
        assert result.steps == 6 and poisoned.calls == 7  # one batch more than steps
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        skipped = [r for r in records if "skipped_batch" in r]
        assert [(r["step"], r["skipped_batch"]) for r in skipped] == [(4, 4)]
        assert [r["step"] for r in records if "loss" in r] == list(range(log_every, 7, log_every))
        weights[log_every] = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in weights[1].items():
        torch.testing.assert_close(weights[3][k], v, rtol=0, atol=0)


def test_masked_step_leaves_fused_adamw_untouched():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    masked_step(opt, torch.tensor(True))
    assert torch.equal(p.detach(), torch.ones(3)) and float(opt.state[p]["step"]) == 0
    masked_step(opt, torch.tensor(False))
    assert float(opt.state[p]["step"]) == 1 and bool((p.detach() < 1).all())
    assert not hasattr(opt, "found_inf")
    loop = torch.optim.AdamW([q := torch.nn.Parameter(torch.ones(3))], lr=0.1, foreach=False)
    q.grad = torch.ones(3)
    masked_step(loop, torch.tensor(True))  # the per-parameter loop reads the flag instead
    assert torch.equal(q.detach(), torch.ones(3)) and not loop.state
