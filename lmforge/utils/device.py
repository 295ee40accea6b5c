"""Device names as users write them."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lmforge.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """ "auto" is CUDA when there is a GPU, else the CPU; any other name must be a device that
    exists on this machine (a typo, a missing GPU or a GPU index past the last is one sentence).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"'{name}' is not a device name; use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{name}' asks for a GPU but this machine has none; use cpu.")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device '{name}' does not exist: this machine has {count} GPU(s), "
                f"cuda:0 to cuda:{count - 1}."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' (Apple GPU) is not available here; use cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return device


#: model size from which bf16 on AMX measured faster than fp32 here: a 135M Llama trained 1.6x
#: and served 1.2-1.6x faster, a 10M gpt-mini trained 1.06x (within the noise)
AMX_BF16_MIN_PARAMS = 50_000_000


def bf16_pays_here(n_params: int) -> bool:
    """Whether a model of `n_params` parameters should hear of bf16 on this CPU: one large
    enough for the products to dominate, on a CPU with AMX bf16 units."""
    return n_params >= AMX_BF16_MIN_PARAMS and cpu_has_amx_bf16()


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices on AMX tiles (Intel Xeon 4th generation and
    later; Linux reports the `amx_bf16` flag in /proc/cpuinfo). There, bf16 matrix products run
    about 4x as fast as fp32 ones (BENCHMARKS.md, "bf16 on the CPU's AMX units")."""
    try:
        return amx_bf16_in(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return False


def amx_bf16_in(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists the `amx_bf16` flag on a `flags` line."""
    return any(
        line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo.splitlines()
    )
