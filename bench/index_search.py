"""Exact search speed: top-k over N unit vectors of d = 384 (all-MiniLM-L6-v2's size) with one
matmul (`lmforge.knowledge.index.exact_top_k`), for 1 and 32 queries at a time; the time per
1M chunks is extrapolated linearly (the scan is linear in N).

    python bench/index_search.py --n 200000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from lmforge.knowledge.index import exact_top_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(args.n, args.dim, generator=g), dim=-1)
    out = {"n": args.n, "dim": args.dim, "threads": args.threads,
           "matrix_mb": round(keys.numel() * 4 / 2**20, 1)}  # fmt: skip
    for batch in (1, 32):
        queries = F.normalize(torch.randn(batch, args.dim, generator=g), dim=-1)
        exact_top_k(queries, keys, 10)  # warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            exact_top_k(queries, keys, 10)
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1e3
        out[f"batch{batch}_ms"] = round(ms, 2)
        out[f"batch{batch}_ms_per_1M_chunks"] = round(ms * 1e6 / args.n, 1)
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
