"""Multi-process training on PyTorch's own engine, launched by `torchrun`.

    torchrun --nproc-per-node 2 -m lmforge pretrain ... strategy=ddp    # or strategy=fsdp

- "ddp": every rank holds the whole model; gradients are averaged (all-reduce) after backward.
- "fsdp": FSDP2 `fully_shard` on every block and the root; parameters, gradients and optimizer
  state are sharded across ranks and gathered layer by layer when needed.

The backend is gloo on CPU and nccl on CUDA. Each rank reads its own slice of every global batch;
only rank 0 logs and writes files. Checkpoints hold full (unsharded) tensors, so a run saved with
N ranks resumes with any number of ranks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"
    owns_group: bool = False  # setup() started the process group, so teardown() ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1 or self.strategy != "none"


def setup(strategy: str, device: torch.device) -> DistInfo:
    """Join the process group started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, ...), or use
    the one the caller already set up (then the caller also tears it down)."""
    if strategy not in ("none", "ddp", "fsdp"):
        raise ConfigError(f"unknown strategy '{strategy}'; choose none, ddp or fsdp.")
    if strategy == "none":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "this process was started by torchrun with several ranks but strategy=none; "
                "pass strategy=ddp or strategy=fsdp."
            )
        return DistInfo()
    if "RANK" not in os.environ:
        # a single process with a strategy still works (world of one), handy for testing
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, strategy, created)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


@contextlib.contextmanager
def process_group(strategy: str, device: torch.device) -> Iterator[DistInfo]:
    """Set up the process group for a run and tear it down after (when this call started it):

    with process_group(cfg.strategy, device):
        fit(...)            # joins the group; does not end it
    """
    info = setup(strategy, device)
    try:
        yield info
    finally:
        if info.owns_group:
            teardown(info)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """Return the module to call in training: DDP wrapper, or the model sharded in place."""
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from lmforge.models.block import Block

        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module)
        fully_shard(model)
    return model


def collective_device(backend: str | None, local_rank: int) -> torch.device:
    """Where the tensors of a collective must live: NCCL moves only CUDA tensors (this rank's
    GPU), gloo moves CPU tensors."""
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


def comm_device(info: DistInfo) -> torch.device:
    """The collective device of the running process group (the CPU when there is none)."""
    backend = dist.get_backend() if dist.is_initialized() else None
    return collective_device(backend, info.local_rank)


def all_mean(value: float | torch.Tensor, info: DistInfo) -> float:
    """The mean of a number over ranks (the logged loss of a step is the global mean)."""
    if not info.enabled or info.world == 1:
        return float(value)
    t = torch.as_tensor(value).reshape(1).to(comm_device(info)).to(torch.float64)
    dist.all_reduce(t)
    return float(t) / info.world


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on any rank (so all ranks decide alike)."""
    if not info.enabled or info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_rank_tensor(flag: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`flag` (a 0-d bool tensor) or-ed over ranks, left on the device: the host never waits
    for it (the all-reduce runs on the collective device, the GPU under NCCL)."""
    if not info.enabled or info.world == 1:
        return flag
    t = flag.to(comm_device(info), torch.float32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.to(flag.device).reshape(()) > 0


def all_gather_cpu(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of a CPU tensor (same shape on all ranks), gathered through the
    collective device and returned on the CPU."""
    if not info.enabled or info.world == 1:
        return [t]
    dev = comm_device(info)
    local = t.to(dev)
    parts = [torch.empty_like(local) for _ in range(info.world)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded model tensors (collective: call on every rank; the result is valid on rank 0)."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Unsharded optimizer state keyed by parameter name (collective)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Load full tensors into a (possibly sharded) model and its optimizer (collective)."""
    set_model_state_dict(model, model_state, options=_LOAD)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_state, options=_LOAD)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized() and info.world > 1:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
