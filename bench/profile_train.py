"""Where one training step's time goes, lmforge against Hugging Face on the same weights:
a per-op profile (torch.profiler, CPU time of each aten op, forward and backward) grouped into
the parts of a Transformer step, next to the time the step's matrix multiplies would take at
the matmul peak measured in the same run.

Groups (by aten op name; a backward op lands in the group of its forward):

    matmul      mm / addmm / bmm / linear and their backward products
    attention   scaled_dot_product_attention (its fused CPU kernel and backward)
    softmax+ce  log_softmax / nll_loss / cross_entropy and their backward (the vocabulary pass)
    norm        layer_norm / rms_norm and their backward
    activation  gelu / silu and their backward
    optimizer   the AdamW step (fused or not) and clip_grad_norm_
    copies      copy_ / contiguous / cat / clone / to / fill / zero
    other       the rest (adds, muls, embedding, views, ...)
    compiled kernels  inductor's generated code (`--compile`: fused norms, activations, adds)

    python bench/profile_train.py --threads 2                      # gpt-mini, 8 x 256
    python bench/profile_train.py --threads 2 --compile            # the step under torch.compile
    python bench/profile_train.py --threads 2 --pair smollm2-135m
    python bench/profile_train.py --threads 2 --pair smollm2-135m --dtype bf16   # autocast

Prints the load average next to the figures (a shared box moves them).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import common
import torch
from torch.profiler import ProfilerActivity, profile
from train_speed import PAIRS, build_pair, hf_loss, lmforge_loss, make_steps

from lmforge.train.flops import matmul_peak_flops, train_flops_per_token

GROUPS = (
    ("optimizer", ("adamw", "adam", "foreach", "norm_backward_", "clip_grad", "_fused_")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("softmax+ce", ("log_softmax", "nll_loss", "cross_entropy", "_softmax")),
    ("norm", ("layer_norm", "rms_norm")),
    ("activation", ("gelu", "silu")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    (
        "copies",
        ("copy_", "contiguous", "aten::cat", "clone", "aten::to", "fill_", "zero_", "empty"),
    ),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def profile_step(step, label: str) -> dict[str, float]:
    """Self CPU seconds of each group over one call of `step` (after one warm-up call)."""
    step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - t0
    groups: dict[str, float] = defaultdict(float)
    top = []
    for ev in prof.key_averages():
        if "compiled" in ev.key.lower() or "cpp_fused" in ev.key:
            group = "compiled kernels"  # inductor's fused code runs inside these events
        elif ev.key.startswith("aten::") or ev.key.startswith("Optimizer"):
            group = group_of(ev.key)
        else:
            continue
        groups[group] += ev.self_cpu_time_total / 1e6
        top.append((ev.self_cpu_time_total / 1e6, ev.count, ev.key))
    print(f"\n### {label}: one step {wall:.2f} s under the profiler")
    for s, n, key in sorted(top, reverse=True)[:15]:
        print(f"  {s:7.3f} s  {n:5d} calls  {key}")
    groups["(wall)"] = wall
    return dict(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", choices=tuple(PAIRS), default="gpt-mini")
    ap.add_argument("--preset", default="gpt-mini")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also profile lmforge compiled")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    args = ap.parse_args()
    args.hf_eager = False
    device = common.setup("cpu", args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    ours, hfs = build_pair(args.pair, args, device)
    batch = args.batch_size or PAIRS[args.pair]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, ours.cfg.vocab_size, (batch, args.seq_len + 1), generator=gen)
    batches = [(ids[:, :-1], ids[:, 1:])]
    steps = {
        "lmforge": make_steps(ours, lmforge_loss(ours, 0), batches, 1, device, args.dtype, True,
                              True),
        "hf-sdpa": make_steps(hfs["hf-sdpa"], hf_loss(hfs["hf-sdpa"]), batches, 1, device,
                              args.dtype, True),
    }  # fmt: skip
    if args.compile:
        steps["lmforge+compile"] = make_steps(
            ours, lmforge_loss(torch.compile(ours), 0), batches, 1, device, args.dtype, True, True
        )
    table = {name: profile_step(fn, name) for name, fn in steps.items()}
    peak = matmul_peak_flops(device, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    ideal = train_flops_per_token(ours, args.seq_len) * batch * args.seq_len / peak
    names = sorted({g for t in table.values() for g in t}, key=lambda g: (g == "(wall)", g))
    print(
        f"\nmatmul peak {peak / 1e9:.1f} GFLOP/s: the step's counted FLOPs take {ideal:.3f} s "
        f"at the peak; load average at the end {os.getloadavg()[0]:.2f}\n"
    )
    rows = [[g, *(f"{t.get(g, 0.0):.3f}" for t in table.values())] for g in names]
    print(common.markdown_table(["self CPU s", *table], rows))


if __name__ == "__main__":
    main()
