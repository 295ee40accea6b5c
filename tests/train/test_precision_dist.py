"""fp16 with a GradScaler, collectives on the device their backend needs, and the process group
owned by whoever set it up."""

from __future__ import annotations

import json

import numpy as np
import torch

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.models import Transformer
from lmforge.objectives import causal_lm_loss
from lmforge.train import distributed as D
from lmforge.train import fit
from lmforge.train.loop import autocast_dtype, grad_scaler


def test_collectives_use_the_device_of_their_backend():
    assert D.collective_device("nccl", 3) == torch.device("cuda", 3)
    assert D.collective_device("gloo", 3) == torch.device("cpu")
    assert D.comm_device(D.DistInfo()) == torch.device("cpu")  # no process group
    one = D.DistInfo()
    t = torch.arange(4, dtype=torch.uint8)
    assert D.all_mean(torch.tensor(2.5), one) == 2.5
    assert D.any_rank(True, one) and D.all_gather_cpu(t, one)[0] is t


def test_a_group_set_up_by_the_caller_is_left_to_it(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_PORT", "29533")
    monkeypatch.delenv("RANK", raising=False)
    with D.process_group("ddp", torch.device("cpu")) as info:
        assert info.owns_group and dist.is_initialized()
        inner = D.setup("ddp", torch.device("cpu"))
        assert not inner.owns_group  # fit would join, not end, this group
        gathered = D.all_gather_cpu(torch.get_rng_state(), info)
        assert torch.equal(gathered[0], torch.get_rng_state())
    assert not dist.is_initialized()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_fp16_trains_with_a_grad_scaler(tmp_path):
    assert grad_scaler(torch.float16, torch.device("cpu")).is_enabled()
    assert not grad_scaler(torch.bfloat16, torch.device("cpu")).is_enabled()
    assert autocast_dtype("fp16", torch.device("cpu")) == torch.float16
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(5, 60, size=37), 60).astype(np.uint16)
    data = TokenWindows(tokens, seq_len=32, batch_size=8, seed=0)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64))
    cfg = TrainConfig(
        max_steps=30, eval_every=30, log_every=1, lr=3e-3, warmup_steps=3, device="cpu",
        precision="fp16",
    )  # fmt: skip
    logs = []
    fit(model, causal_lm_loss, data, None, cfg, tmp_path, progress=False, on_log=logs.append)
    assert logs[-1]["loss"] < 0.7 * logs[0]["loss"]
    state = json.loads(
        (tmp_path / "checkpoints" / "step-00000030" / "trainer_state.json").read_text()
    )
    assert state["grad_scaler"]["scale"] > 0


def test_fsdp_model_returns_no_view(monkeypatch):
    import warnings

    from lmforge.objectives import causal_lm_loss as loss_fn

    monkeypatch.setenv("MASTER_PORT", "29534")
    monkeypatch.delenv("RANK", raising=False)
    with D.process_group("fsdp", torch.device("cpu")) as info:
        model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64))
        D.wrap(model, info)
        x = torch.randint(0, 64, (2, 16))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            loss_fn(model, {"input_ids": x, "labels": x}).loss.backward()
    assert not [w for w in seen if "view tensor" in str(w.message)]
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
