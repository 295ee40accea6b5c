"""Memory and time of one causal attention forward + backward at long context:
`lmforge.models.attention.attention` with backend "sdpa" (fused kernels), "math" (the formula
written out, which materialises the (T, T) scores, weights and mask) and "chunked" (blocks of
queries against all keys, the mask given as positions, each block recomputed in backward).

Batch 1, 8 heads, head_dim 64 by default, at 1k, 4k and 16k tokens. Each case runs in a fresh
subprocess so that its peak memory is its own:

- CPU: peak resident set size (ru_maxrss) after the case minus the peak before it (inputs and the
  upstream gradient allocated, kernels warmed up on a short sequence). Allocator caching makes
  this an upper bound of what the case needed.
- CUDA: torch.cuda.max_memory_allocated() during the case minus memory allocated before it.

A math case whose (T, T) buffers alone would exceed --max-gb is skipped and reported as such.

    python bench/attention_memory.py                              # CPU, fp32
    python bench/attention_memory.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import common
import torch

from lmforge.models.attention import attention
from lmforge.models.masks import AttentionMask


def math_estimate_gb(t: int, heads: int, dtype_bytes: int) -> float:
    """Rough peak of the math path: fp32 scores, weights and their two gradients (B H T T each),
    plus the (T, T) causal mask."""
    return (4 * heads * t * t * 4 + t * t * dtype_bytes) / 1e9


def child(args: argparse.Namespace) -> None:
    device = common.setup(args.device, args.threads)
    dtype = common.DTYPES[args.dtype]
    shape = (1, args.heads, args.seq, args.head_dim)

    def inputs(s: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        q, k, v = (torch.randn(s, device=device, dtype=dtype).requires_grad_() for _ in range(3))
        return q, k, v, torch.randn(s, device=device, dtype=dtype)

    def step(q, k, v, g) -> None:
        if args.backend == "chunked":  # the mask as positions, sliced per block of queries
            pos = torch.arange(q.size(-2), device=device)
            mask = AttentionMask(q_pos=pos, k_pos=pos, causal=True)
            out, _ = attention(q, k, v, mask=mask, backend="chunked")
        else:
            out, _ = attention(q, k, v, causal=True, backend=args.backend)
        out.backward(g)
        for t in (q, k, v):
            t.grad = None

    step(*inputs((1, args.heads, 128, args.head_dim)))  # kernels and allocator warm
    q, k, v, g = inputs(shape)
    common.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    first = common.timed(lambda: step(q, k, v, g), device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = [common.timed(lambda: step(q, k, v, g), device) for _ in range(args.repeats)]
    print(json.dumps({"peak_bytes": peak, "first_s": first, "times_s": times}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--backends", nargs="+", default=["sdpa", "math", "chunked"])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after the measured one")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--max-gb", type=float, default=8.0, help="skip math cases above this")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="sdpa", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    device = common.setup(args.device, args.threads)
    print(
        f"# attention forward+backward memory: batch 1, {args.heads} heads, "
        f"head_dim {args.head_dim}, causal, {args.dtype}"
    )
    common.print_machine(device)
    dtype_bytes = torch.empty((), dtype=common.DTYPES[args.dtype]).element_size()
    rows, results = [], []
    for t in args.seq_lens:
        for backend in args.backends:
            est = math_estimate_gb(t, args.heads, dtype_bytes)
            if backend == "math" and est > args.max_gb:
                note = f"skipped: the (T, T) buffers alone need ~{est:.0f} GB > --max-gb"
                rows.append([t, backend, "-", "-", note])
                results.append({"seq": t, "backend": backend, "skipped": note})
                print(f"  {t} {backend}: {note}")
                continue
            cmd = [sys.executable, __file__, "--child", "--seq", str(t), "--backend", backend]
            cmd += ["--heads", str(args.heads), "--head-dim", str(args.head_dim)]
            cmd += ["--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                note = f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
                rows.append([t, backend, "-", "-", note])
                results.append({"seq": t, "backend": backend, "failed": note})
                print(f"  {t} {backend}: {note}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            mib = r["peak_bytes"] / 2**20
            secs = common.median(r["times_s"]) if r["times_s"] else r["first_s"]
            rows.append([t, backend, f"{mib:,.0f}", f"{secs * 1e3:,.2f}", ""])
            results.append({"seq": t, "backend": backend, **r})
            print(f"  {t} {backend}: peak +{mib:,.0f} MiB, {secs * 1e3:,.2f} ms")
    print()
    headers = ["tokens", "backend", "peak memory (MiB)", "fwd+bwd ms (median)", "note"]
    print(common.markdown_table(headers, rows))
    if args.json is not None:
        common.write_json(args.json, args, device, results)


if __name__ == "__main__":
    main()
