"""The training-speed levers one at a time, on SmolLM2-135M's shape (CPU or GPU, fp32):

    optimizer   one AdamW step over the model's 134.5M parameters: the per-parameter loop,
                foreach, fused (`build_optimizer`'s choice)
    head        LM head + cross-entropy, forward and backward, for batch x 256 rows of
                d_model 576 against the 49,152-word vocabulary: full logits + F.cross_entropy
                vs `lm_head_cross_entropy` (chunked)

    python bench/train_levers.py --threads 2

Contenders alternate within each repeat; medians, best times and the paired ratio to the first
contender are printed with the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import common
import torch

from lmforge.objectives.chunked import lm_head_cross_entropy, reference_lm_head_cross_entropy
from lmforge.train.optim import param_groups


def report(title: str, times: dict[str, list[float]]) -> None:
    first = next(iter(times.values()))
    print(f"\n{title} (load average at the end {os.getloadavg()[0]:.2f})")
    rows = [
        [name, common.median(ts) * 1e3, min(ts) * 1e3,
         common.median([a / b for a, b in zip(first, ts, strict=True)])]
        for name, ts in times.items()
    ]  # fmt: skip
    print(
        common.markdown_table(["contender", "ms (median)", "ms (best)", "speed-up (paired)"], rows)
    )


def optimizer_steps(device: torch.device) -> dict[str, Callable[[], object]]:
    ours, _ = common.llama_pair(device)
    for p in ours.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(param_groups(ours, 0.1), lr=1e-4, **kw) for k, kw in kinds.items()}
    return {k: opt.step for k, opt in opts.items()}


def head_steps(device: torch.device, batch: int) -> dict[str, Callable[[], object]]:
    cfg = common.SMOLLM2_135M
    n, d, v = batch * 256, cfg["d_model"], cfg["vocab_size"]
    h = torch.randn(n, d, device=device, requires_grad=True)
    w = (torch.randn(v, d, device=device) * 0.02).requires_grad_()
    y = torch.randint(0, v, (n,), device=device)

    def full() -> None:
        h.grad = w.grad = None
        reference_lm_head_cross_entropy(h, w, y).backward()

    def chunked() -> None:
        h.grad = w.grad = None
        lm_head_cross_entropy(h, w, y)[0].backward()

    return {"full logits": full, "chunked": chunked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = common.setup(args.device, args.threads)
    common.print_machine(device)
    log = None
    report("AdamW step, 134.5M parameters",
           common.alternate(optimizer_steps(device), device, args.repeats, log=log))  # fmt: skip
    report(f"LM head + cross-entropy, {args.batch_size} x 256 rows",
           common.alternate(head_steps(device, args.batch_size), device, args.repeats, log=log))  # fmt: skip


if __name__ == "__main__":
    main()
