"""The training loop: loss falls, exact resume, schedule, checkpoint atomicity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.train import TrainingError, fit, get_lr, param_groups
from lmforge.train.checkpoint import clean_stale, latest_checkpoint, list_checkpoints, verify


def _data(seed=0):
    # a learnable stream: a repeating pattern with noise
    rng = np.random.default_rng(seed)
    pattern = rng.integers(5, 60, size=37)
    tokens = np.tile(pattern, 300).astype(np.uint16)
    return TokenWindows(tokens, seq_len=32, batch_size=8, seed=seed)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64, **kw))


def test_tiny_run_loss_falls(tiny_run):
    lines = [json.loads(x) for x in (tiny_run.out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines]
    assert losses[-1] < losses[0] - 0.5
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(lines[0])
    assert any("eval_loss" in r for r in lines)
    assert (tiny_run.out_dir / "loss.png").stat().st_size > 1000
    assert tiny_run.eval_ppl < tiny_run.unigram_ppl


def test_loss_falls_on_pattern(tmp_path):
    cfg = TrainConfig(
        max_steps=30, eval_every=10, lr=3e-3, warmup_steps=5, log_every=1, device="cpu"
    )
    data = _data()
    logs = []
    fit(
        _model(),
        causal_lm_loss,
        data,
        lambda: data.sequential(2),
        cfg,
        tmp_path,
        progress=False,
        on_log=logs.append,
    )
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_gives_identical_losses(tmp_path, dropout):
    cfg = TrainConfig(
        max_steps=12, eval_every=4, lr=3e-3, warmup_steps=2, log_every=1, device="cpu"
    )
    data = _data()
    full = []
    fit(
        _model(dropout=dropout),
        causal_lm_loss,
        data,
        lambda: data.sequential(2),
        cfg,
        tmp_path / "a",
        progress=False,
        on_log=full.append,
    )

    def crash(record):
        if record["step"] == 10:
            raise _Stop

    with pytest.raises(_Stop):
        fit(
            _model(dropout=dropout),
            causal_lm_loss,
            data,
            lambda: data.sequential(2),
            cfg,
            tmp_path / "b",
            progress=False,
            on_log=crash,
        )
    # a fresh model object with a different init: resume must restore everything
    fit(
        _model(seed=1, dropout=dropout),
        causal_lm_loss,
        data,
        lambda: data.sequential(2),
        cfg,
        tmp_path / "b",
        resume=True,
        progress=False,
    )
    resumed = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000012" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000012" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lr_schedule_formula():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert get_lr(0, cfg) == pytest.approx(1e-4)
    assert get_lr(9, cfg) == pytest.approx(1e-3)
    assert get_lr(10, cfg) == pytest.approx(1e-3)
    mid = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert get_lr(60, cfg) == pytest.approx(mid)
    assert get_lr(110, cfg) == pytest.approx(1e-4)


def test_no_decay_on_norms_biases_embeddings():
    model = _model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("proj.weight") for n in decayed)
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "embed.tok.weight" in kept and any("norm" in n for n in kept)


def test_damaged_newest_checkpoint_falls_back(tmp_path):
    cfg = TrainConfig(max_steps=6, eval_every=2, keep_last=3, log_every=1, device="cpu")
    data = _data()
    fit(_model(), causal_lm_loss, data, lambda: data.sequential(1), cfg, tmp_path, progress=False)
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == [
        "step-00000002",
        "step-00000004",
        "step-00000006",
    ]
    assert all(verify(p) for p in list_checkpoints(root))
    # a torn write of the newest checkpoint, and a stale temporary dir from a killed save
    (root / "step-00000006" / "model.safetensors").write_bytes(b"partial")
    (root / ".tmp-step-00000008-abc").mkdir()
    clean_stale(root)
    assert not (root / ".tmp-step-00000008-abc").exists()
    with pytest.warns(UserWarning, match="falling back"):
        assert latest_checkpoint(root).name == "step-00000004"
    state = json.loads((root / "step-00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4


def test_nonfinite_loss_skips_then_halts(tmp_path):
    data = _data()
    bad = {3, 4}

    def poisoned(model, batch):
        out = causal_lm_loss(model, batch)
        if poisoned.calls in bad:
            out.loss = out.loss * float("nan")
        poisoned.calls += 1
        return out

    poisoned.calls = 0
    cfg = TrainConfig(max_steps=6, eval_every=100, log_every=1, device="cpu", max_skips=3)
    logs = []
    result = fit(
        _model(), poisoned, data, None, cfg, tmp_path / "a", progress=False, on_log=logs.append
    )
    assert result.steps == 6 and [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6]
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert sum("skipped_batch" in x for x in lines) == 2

    poisoned.calls = 0
    bad.update(range(3, 100))
    with pytest.raises(TrainingError, match=r"non-finite .* step 4 \(batch 5\), 3 time"):
        fit(_model(), poisoned, data, None, cfg, tmp_path / "b", progress=False)
    cfg_halt = TrainConfig(max_steps=6, eval_every=100, device="cpu", nonfinite="halt")
    poisoned.calls = 0
    with pytest.raises(TrainingError, match="step 4 \\(batch 3\\), 1 time"):
        fit(_model(), poisoned, data, None, cfg_halt, tmp_path / "c", progress=False)
