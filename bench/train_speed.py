"""Training throughput: lmforge vs Hugging Face on two model pairs, same shape, same weights.

    gpt-mini        lmforge gpt-mini vs `GPT2LMHeadModel`, batch 8 x 256 (vocabulary 8,192)
    smollm2-135m    lmforge Llama vs `LlamaForCausalLM` of SmolLM2-135M's shape (30 layers,
                    d_model 576, 9 heads / 3 KV heads, d_ff 1536, vocabulary 49,152, tied),
                    batch 4 x 256

One training step = forward + cross-entropy + backward + clip_grad_norm_(1.0) + AdamW step +
zero_grad, on the same random token batches, with the same AdamW settings and parameter groups
(lmforge's `param_groups`, applied to both models). Contenders per pair:

    lmforge         the step `lmforge.train.fit` takes by default: its objective
                    (`causal_lm_loss`: full logits, as `chunked_ce_vocab` = 0) and
                    `build_optimizer`'s fused AdamW, with the gradient clipping inside the
                    AdamW kernel (`clip_scale` as its grad_scale)
    lmforge-plain   the same model with the levers off: full logits, clip_grad_norm_ and the
                    per-parameter AdamW loop (`--levers`)
    lmforge-clip-apart  fused AdamW after a separate clip_grad_norm_ pass (`--levers`)
    lmforge-1thread the lmforge step with one intra-op thread (`--levers`; the `threads` key)
    lmforge-sdpa-math   the lmforge step with SDPA's math backend instead of the CPU flash
                    kernel PyTorch picks (`--levers`)
    lmforge-chunked fused AdamW and the chunked LM-head cross-entropy (`chunked_ce_vocab=32768`;
                    `--levers`, vocabularies of 32,768 and more)
    lmforge+compile the lmforge step with the model under torch.compile (`--compile`: the
                    `compile` train key); with `--levers` also lmforge-chunked+compile
    hf-sdpa         Hugging Face with SDPA attention; its logits go to F.cross_entropy (float32)
                    and it steps with fused AdamW, the Hugging Face Trainer's default
                    (`adamw_torch_fused`) on torch >= 2.8

Both losses on the first batch are printed before training (they must agree).

    python bench/train_speed.py                                   # both pairs, CPU, fp32
    python bench/train_speed.py --pair gpt-mini --levers --compile
    python bench/train_speed.py --device cuda --dtype bf16 --batch-size 32 --pair gpt-mini

Reports tokens/s (median over repeats; contenders alternate within each repeat), the ratio to
Hugging Face (of medians; paired: the median of per-repeat ratios; best/best), and each
contender's MFU: tokens/s x training FLOPs per token (`lmforge.train.flops.train_flops_per_token`,
attention counted) / the matrix-multiply peak measured in the same run (`matmul_peak_flops`,
before and after the timing; the higher is used). The load average is printed at the start and
the end of each pair.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import common
import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.objectives.lm import CausalLMLoss, cross_entropy
from lmforge.train.flops import matmul_peak_flops, train_flops_per_token
from lmforge.train.optim import clip_scale, fused_supported, masked_step, param_groups

LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0
PAIRS = {"gpt-mini": 8, "smollm2-135m": 4}  # pair -> default batch size (sequences of 256)
CHUNKED = 32768  # chunked_ce_vocab of the lmforge-chunked contender


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lmforge_loss(model: nn.Module, chunk_vocab: int) -> Callable[[Tensor, Tensor], Tensor]:
    objective = CausalLMLoss(chunk_vocab)
    return lambda x, y: objective(model, {"input_ids": x, "labels": y}).loss


def hf_loss(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, y: cross_entropy(model(input_ids=x).logits, y)


def one_thread():
    """Run with one intra-op thread (the thread-count lever), restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sdpa_math():
    """Run attention through SDPA's math backend (the SDPA-backend lever)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


LEVER_CONTEXTS = {"lmforge-1thread": one_thread, "lmforge-sdpa-math": sdpa_math}


def make_steps(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: list[tuple[Tensor, Tensor]],
    n_steps: int,
    device: torch.device,
    dtype: str,
    fused: bool,
    fold_clip: bool = False,
    context: Callable | None = None,
) -> Callable[[], float]:
    """A closure running `n_steps` full training steps; returns the last loss. `fused`: the
    fused AdamW kernel (where PyTorch has one for these parameters), else the per-parameter loop.
    `fold_clip` (with `fused`): clip inside the AdamW kernel as `lmforge.train.fit` does
    (`clip_scale` as its grad_scale), else `clip_grad_norm_` first. `context`: a generator
    function the steps run inside (a lever: one thread, an SDPA backend)."""
    groups = param_groups(model, WEIGHT_DECAY)
    params = [p for g in groups for p in g["params"]]
    fused = fused and fused_supported(params)
    opt = torch.optim.AdamW(
        groups,
        lr=LR,
        betas=BETAS,
        eps=EPS,
        fused=fused or None,
        foreach=False if not fused else None,
    )
    cycle = itertools.cycle(batches)
    fold_clip = fold_clip and fused
    no_skip = torch.zeros((), dtype=torch.bool, device=device)
    enter = contextlib.contextmanager(context) if context is not None else contextlib.nullcontext

    def run() -> float:
        loss = torch.zeros(())
        with enter():
            for _ in range(n_steps):
                x, y = next(cycle)
                with autocast(device, dtype):
                    loss = loss_fn(x, y)
                loss.backward()
                if fold_clip:
                    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
                    masked_step(opt, no_skip, clip_scale(norm, CLIP))
                else:
                    torch.nn.utils.clip_grad_norm_(params, CLIP)
                    opt.step()
                opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run


def build_pair(name: str, args, device: torch.device) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The lmforge model and the Hugging Face model(s) of pair `name`, with the same weights."""
    if name == "smollm2-135m":
        ours, hf = common.llama_pair(device)
        return ours, {"hf-sdpa": hf}
    overrides = {}
    if args.seq_len > ModelConfig.from_preset(args.preset).max_seq_len:
        overrides["max_seq_len"] = args.seq_len
    ours, hf = common.gpt_pair(args.preset, device, attn_implementation="sdpa", **overrides)
    hfs = {"hf-sdpa": hf}
    if args.hf_eager:
        _, hfs["hf-eager"] = common.gpt_pair(
            args.preset, device, attn_implementation="eager", **overrides
        )
    return ours, hfs


def run_pair(name: str, args, device: torch.device) -> dict:
    """Time one pair's contenders (module docstring); print and return the figures."""
    ours, hfs = build_pair(name, args, device)
    batch_size = args.batch_size or PAIRS[name]
    chunk_vocab = CausalLMLoss().chunk_vocab  # the default objective's
    # name -> (model to step, loss, fused AdamW, clipping inside it)
    models: dict[str, tuple[nn.Module, Callable, bool, bool]] = {
        "lmforge": (ours, lambda m: lmforge_loss(m, chunk_vocab), True, True)
    }
    if args.levers:
        models["lmforge-plain"] = (ours, lambda m: lmforge_loss(m, 0), False, False)
        models["lmforge-clip-apart"] = (ours, lambda m: lmforge_loss(m, chunk_vocab), True, False)
        for lever in LEVER_CONTEXTS:
            models[lever] = models["lmforge"]
        if ours.cfg.vocab_size >= CHUNKED:
            models["lmforge-chunked"] = (ours, lambda m: lmforge_loss(m, CHUNKED), True, True)
    for hf_name, hf in hfs.items():
        models[hf_name] = (hf, hf_loss, True, False)

    vocab = ours.cfg.vocab_size
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, vocab, (batch_size, args.seq_len + 1), generator=gen).to(device)
        batches.append((ids[:, :-1], ids[:, 1:]))

    print(f"\n## {name}: batch {batch_size} x {args.seq_len} tokens")
    common.print_machine(device)
    print(f"- parameters: {common.n_params(ours):,}; dtype {args.dtype}")

    # the same loss before any update (eval mode: dropout off, if the preset has any)
    x0, y0 = batches[0]
    losses0 = {}
    for label in ("lmforge", "hf-sdpa"):
        model, loss_of, _, _ = models[label]
        model.eval()
        with torch.no_grad(), autocast(device, args.dtype):
            losses0[label] = float(loss_of(model)(x0, y0))
        model.train()
    print("- step-0 loss: " + ", ".join(f"{n} {v:.6f}" for n, v in losses0.items()))

    contenders = {}
    for label, (model, loss_of, fused, fold) in models.items():
        contenders[label] = make_steps(
            model, loss_of(model), batches, args.steps, device, args.dtype, fused, fold,
            LEVER_CONTEXTS.get(label),
        )  # fmt: skip
    if args.compile:  # the model under torch.compile, as the `compile` train key does
        compiled = torch.compile(ours)
        contenders["lmforge+compile"] = make_steps(
            ours, lmforge_loss(compiled, chunk_vocab), batches, args.steps, device,
            args.dtype, True, True,
        )  # fmt: skip
        if args.levers and ours.cfg.vocab_size >= CHUNKED:
            contenders["lmforge-chunked+compile"] = make_steps(
                ours, lmforge_loss(compiled, CHUNKED), batches, args.steps, device,
                args.dtype, True, True,
            )  # fmt: skip
    if args.contenders:  # a subset (hf-sdpa, the reference of the ratios, always runs)
        keep = {*args.contenders.split(","), "hf-sdpa"}
        contenders = {n: f for n, f in contenders.items() if n in keep}
    peak_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak_before = matmul_peak_flops(device, peak_dtype)
    times = common.alternate(contenders, device, args.repeats, args.warmup)
    peak = max(peak_before, matmul_peak_flops(device, peak_dtype))
    load_end = os.getloadavg()[0]
    flops_token = train_flops_per_token(ours, args.seq_len)
    tokens = args.steps * batch_size * args.seq_len
    rates = {n: [tokens / t for t in ts] for n, ts in times.items()}
    ratios = common.ratio_columns(rates, "hf-sdpa")
    rows = [
        [n, common.median(r), common.spread(r), *ratios[n], common.median(r) * flops_token / peak]
        for n, r in rates.items()
    ]
    print(
        f"- matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s ({args.dtype}); "
        f"training FLOPs per token {flops_token / 1e6:.2f} M (attention counted); "
        f"load average (1 min) at the end: {load_end:.2f}"
    )
    print()
    headers = [
        "contender",
        "tokens/s (median)",
        "range",
        "vs hf-sdpa",
        "paired",
        "best/best",
        "MFU",
    ]
    print(common.markdown_table(headers, rows))
    med, paired, best = ratios["lmforge"]
    print(
        f"\n{name}: lmforge / hf-sdpa training tokens/s: {med:.2f}x (paired {paired:.2f}x, "
        f"best {best:.2f}x); lmforge MFU {rows[0][-1]:.2f}"
    )
    return {
        "batch_size": batch_size,
        "machine": common.machine_info(device),
        "load_average_end": load_end,
        "step0_loss": losses0,
        "tokens_per_s": rates,
        "matmul_peak_flops": peak,
        "train_flops_per_token": flops_token,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", choices=(*PAIRS, "both"), default="both")
    ap.add_argument("--preset", default="gpt-mini", help="the lmforge preset of the gpt pair")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="default: 8 (gpt-mini), 4 (smollm2-135m)"
    )
    ap.add_argument("--steps", type=int, default=1, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed repeats per contender")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    ap.add_argument("--levers", action="store_true", help="also time lmforge with levers off")
    ap.add_argument("--compile", action="store_true", help="also time lmforge's model compiled")
    ap.add_argument("--hf-eager", action="store_true", help="also time HF GPT-2 eager attention")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--contenders", default=None, help="comma-separated subset to time (default: all)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    device = common.setup(args.device, args.threads)
    pairs = list(PAIRS) if args.pair == "both" else [args.pair]
    results = {name: run_pair(name, args, device) for name in pairs}
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "pairs": results},
                       indent=2)
        )  # fmt: skip


if __name__ == "__main__":
    main()
