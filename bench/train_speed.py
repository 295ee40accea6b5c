"""Training throughput: lmforge vs Hugging Face `GPT2LMHeadModel`, same shape, same weights.

One training step = forward + cross-entropy + backward + clip_grad_norm_(1.0) + AdamW step +
zero_grad, on the same random token batches, with the same AdamW settings and parameter groups
(lmforge's `param_groups`, applied to both models). lmforge's step uses its own objective
(`causal_lm_loss`, as `lmforge.train.fit` does); the Hugging Face step feeds its logits to the
same cross-entropy. Both losses on the first batch are printed before training (they must agree).

    python bench/train_speed.py                                   # gpt-mini, CPU, fp32
    python bench/train_speed.py --device cuda --dtype bf16 --compile --batch-size 32

Reports tokens/s (median over repeats; contenders alternate within each repeat), the ratio
lmforge / Hugging Face, and each contender's MFU: tokens/s x training FLOPs per token
(`lmforge.train.flops.train_flops_per_token`, attention counted) / the matrix-multiply peak
measured in the same run (`matmul_peak_flops`, before and after the timing; the higher is used).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import common
import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.objectives.lm import causal_lm_loss, cross_entropy
from lmforge.train.flops import matmul_peak_flops, train_flops_per_token
from lmforge.train.optim import param_groups

LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lmforge_loss(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, y: causal_lm_loss(model, {"input_ids": x, "labels": y}).loss


def hf_loss(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, y: cross_entropy(model(input_ids=x).logits, y)


def make_steps(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: list[tuple[Tensor, Tensor]],
    n_steps: int,
    device: torch.device,
    dtype: str,
) -> Callable[[], float]:
    """A closure running `n_steps` full training steps; returns the last loss."""
    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=EPS)
    params = [p for g in opt.param_groups for p in g["params"]]
    cycle = itertools.cycle(batches)

    def run() -> float:
        loss = torch.zeros(())
        for _ in range(n_steps):
            x, y = next(cycle)
            with autocast(device, dtype):
                loss = loss_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt-mini")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1, help="untimed repeats per contender")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--hf-eager", action="store_true", help="also time HF with eager attention")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    device = common.setup(args.device, args.threads)
    overrides = {}
    cfg_len = ModelConfig.from_preset(args.preset).max_seq_len
    if args.seq_len > cfg_len:
        overrides["max_seq_len"] = args.seq_len
    impls = ["sdpa", "eager"] if args.hf_eager else ["sdpa"]
    ours, hf = common.gpt_pair(args.preset, device, attn_implementation="sdpa", **overrides)
    models: dict[str, tuple[nn.Module, Callable]] = {"lmforge": (ours, lmforge_loss)}
    models["hf-sdpa"] = (hf, hf_loss)
    if "eager" in impls:
        _, hf_eager = common.gpt_pair(args.preset, device, attn_implementation="eager", **overrides)
        models["hf-eager"] = (hf_eager, hf_loss)

    vocab = ours.cfg.vocab_size
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len + 1), generator=gen)
        ids = ids.to(device)
        batches.append((ids[:, :-1], ids[:, 1:]))

    print(f"# training speed: {args.preset}, batch {args.batch_size} x {args.seq_len} tokens")
    common.print_machine(device)
    print(f"- parameters: {common.n_params(ours):,}; dtype {args.dtype}; compile {args.compile}")

    # the same loss before any update (eval mode: dropout off, if the preset has any)
    x0, y0 = batches[0]
    losses0 = {}
    for name, (model, loss_of) in models.items():
        model.eval()
        with torch.no_grad(), autocast(device, args.dtype):
            losses0[name] = float(loss_of(model)(x0, y0))
        model.train()
    print("- step-0 loss: " + ", ".join(f"{n} {v:.6f}" for n, v in losses0.items()))

    contenders = {}
    for name, (model, loss_of) in models.items():
        runnable = torch.compile(model) if args.compile else model
        contenders[name] = make_steps(
            model, loss_of(runnable), batches, args.steps, device, args.dtype
        )
    peak_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak_before = matmul_peak_flops(device, peak_dtype)
    times = common.alternate(contenders, device, args.repeats, args.warmup)
    peak = max(peak_before, matmul_peak_flops(device, peak_dtype))
    flops_token = train_flops_per_token(ours, args.seq_len)
    tokens = args.steps * args.batch_size * args.seq_len
    rates = {n: [tokens / t for t in ts] for n, ts in times.items()}
    ratios = common.ratio_columns(rates, "hf-sdpa")
    rows = [
        [n, common.median(r), common.spread(r), *ratios[n], common.median(r) * flops_token / peak]
        for n, r in rates.items()
    ]
    print(
        f"- matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s ({args.dtype}); "
        f"training FLOPs per token {flops_token / 1e6:.2f} M (attention counted)"
    )
    print()
    headers = ["model", "tokens/s (median)", "range", "vs hf-sdpa", "paired", "best/best", "MFU"]
    print(common.markdown_table(headers, rows))
    med, paired, best = ratios["lmforge"]
    print(
        f"\nlmforge / hf-sdpa training tokens/s: {med:.2f}x (paired {paired:.2f}x, best {best:.2f}x)"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": common.machine_info(device),
                    "step0_loss": losses0,
                    "tokens_per_s": rates,
                    "matmul_peak_flops": peak,
                    "train_flops_per_token": flops_token,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
