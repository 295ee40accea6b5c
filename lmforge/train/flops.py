"""Training FLOPs of a decoder and model FLOPs utilization (MFU), for benchmarks and logs."""

from __future__ import annotations

import time

import torch
from torch import nn


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """FLOPs of one training step per token of a decoder-only model (forward + backward):

        flops/token = 6 * N_matmul + 12 * n_layer * seq_len * n_head * head_dim

    N_matmul is the weight count of every matrix multiply (attention projections, MLP, the LM
    head even when it is tied to the embedding; not the embedding lookup, norms or biases): a
    multiply-add is 2 FLOPs forward and backward costs twice the forward, so 2 + 4 = 6 per
    weight. Attention scores Q K^T and the weighted values A V cost 2 * seq_len * n_head *
    head_dim each per token and layer forward, times 3 for forward + backward; the full
    seq_len x seq_len square is counted (what the kernels compute), not the causal half.
    Element-wise work (softmax, norms, activations, the optimizer) is left out, as in the
    PaLM paper's MFU.
    """
    cfg = model.cfg
    if cfg.arch != "decoder":
        raise ValueError(f"train_flops_per_token counts decoder-only models, not {cfg.arch}.")
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_head
    return 6.0 * n_matmul + 12.0 * cfg.n_layer * seq_len * cfg.n_head * head_dim


def matmul_peak_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 10
) -> float:
    """The best measured FLOP/s of an n x n @ n x n matrix multiply (2 n^3 FLOPs) on `device`:
    the attainable peak that MFU is measured against, taken in the same run as the training."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best
