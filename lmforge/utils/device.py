"""Device names as users write them."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """ "auto" is CUDA when there is a GPU, else the CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
