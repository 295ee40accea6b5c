"""Where lmforge's greedy decode time goes: the engine against bare model loops, a per-op
profile (torch.profiler) and a per-function Python profile (cProfile).

Variants, all greedy on the same model and prompts, each generating `--new-tokens` tokens:

- generate:      `lmforge.generate.generate` (prefill + the model's decode
                 step `Transformer.decode_step` + processors + records), eager
- generate-compile: the same with compile=True (`--compile`; the warm-up call compiles)
- loop-mask:     prefill, then model(token, attention_mask=grown mask, cache) + argmax + tolist,
                 what the engine does without its bookkeeping
- loop-nomask:   the same with attention_mask=None (no mask growth, no `bool(mask.all())` syncs)
- loop-nosync:   attention_mask=None and no `.tolist()` per step (the argmax stays on device)
- matmul-floor:  only the step's matrix products (every linear of every layer and the LM head on
                 a (B, 1, d) input, nothing else): the cost of reading the weights once per token
- matmul-fused:  the same with q, k, v as one (3d, d) product, as a fused-QKV transform would do
- hf:            Hugging Face `generate` on the same weights, for scale

    python bench/profile_decode.py --batch-size 1
    python bench/profile_decode.py --batch-size 8 --compile
    python bench/profile_decode.py --device cuda --dtype bf16 --batch-size 8
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from collections import Counter
from collections.abc import Callable

import common
import torch
from decode_speed import hf_call, lmforge_call
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators a piece of code dispatches (views included), by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def op_counts(fn: Callable, new: int, top: int) -> tuple[float, list[tuple[str, float]]]:
    """(ATen operators per generated token, the `top` most frequent per token) of one call."""
    with OpCounter() as counter:
        fn()
    total = sum(counter.counts.values()) / new
    return total, [(n, c / new) for n, c in counter.counts.most_common(top)]


def bare_loop(model: nn.Module, prompts: Tensor, new: int, mask: bool, sync: bool) -> Callable:
    @torch.inference_mode()
    def run() -> Tensor:
        b, t = prompts.shape
        cache = model.new_cache(b, t + new)
        m = torch.ones_like(prompts)
        logits = model(prompts, attention_mask=m if mask else None, cache=cache, last_only=True)
        token = logits.logits[:, -1].argmax(-1)
        out = [token]
        for _ in range(new - 1):
            if sync:
                token.tolist()
            if mask:
                m = torch.cat([m, m.new_ones(b, 1)], dim=1)
            step = model(
                token[:, None], attention_mask=m if mask else None, cache=cache, last_only=True
            )
            token = step.logits[:, -1].float().argmax(-1)
            out.append(token)
        return torch.stack(out, 1)

    return run


def matmul_floor(model: nn.Module, batch: int, new: int, fused: bool) -> Callable:
    """`new` steps of the decode step's matrix products alone (inputs not chained)."""
    weights: list[tuple[Tensor, Tensor | None]] = []
    for block in model.decoder.layers:
        a, m = block.attn, block.mlp
        qkv = [a.q_proj, a.k_proj, a.v_proj]
        if fused:
            w = torch.cat([p.weight for p in qkv])
            b = torch.cat([p.bias for p in qkv]) if a.q_proj.bias is not None else None
            weights.append((w, b))
        else:
            weights += [(p.weight, p.bias) for p in qkv]
        linears = [a.o_proj, *(getattr(m, n) for n in ("gate_proj", "up_proj") if hasattr(m, n))]
        weights += [(p.weight, p.bias) for p in (*linears, m.down_proj)]
    weights.append((model.heads.lm_head.weight, None))
    p = next(model.parameters())
    d, d_ff = model.cfg.d_model, model.cfg.d_ff
    x = {n: torch.randn(batch, 1, n, device=p.device, dtype=p.dtype) for n in (d, d_ff)}

    @torch.inference_mode()
    def run() -> None:
        for _ in range(new):
            for w, b in weights:
                torch.nn.functional.linear(x[w.size(1)], w, b)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt-mini")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="add generate with compile=True")
    ap.add_argument("--top", type=int, default=25, help="rows of each profile table")
    args = ap.parse_args()

    device = common.setup(args.device, args.threads)
    ours, hf = common.gpt_pair(args.preset, device, common.DTYPES[args.dtype], eos_id=None)
    ours.eval()
    hf.eval()
    gen = torch.Generator().manual_seed(2)
    vocab = ours.cfg.vocab_size
    prompts = torch.randint(0, vocab, (args.batch_size, args.prompt_len), generator=gen)
    prompts = prompts.to(device)
    new = args.new_tokens
    print(f"# decode profile: {args.preset}, batch {args.batch_size}, {new} new tokens")
    common.print_machine(device)

    variants = {
        "generate": lmforge_call(ours, prompts, new, False),
        "loop-mask": bare_loop(ours, prompts, new, mask=True, sync=True),
        "loop-nomask": bare_loop(ours, prompts, new, mask=False, sync=True),
        "loop-nosync": bare_loop(ours, prompts, new, mask=False, sync=False),
        "matmul-floor": matmul_floor(ours, args.batch_size, new, fused=False),
        "matmul-fused": matmul_floor(ours, args.batch_size, new, fused=True),
        "hf": hf_call(hf, prompts, new, False),
    }
    if args.compile:
        variants["generate-compile"] = lmforge_call(ours, prompts, new, True)
    ref = torch.tensor(variants["generate"](), device=device)
    for name in ("loop-mask", "loop-nomask", "loop-nosync", "generate-compile"):
        if name not in variants:
            continue
        same = torch.equal(torch.as_tensor(variants[name]()).to(ref.device), ref)
        print(f"- {name} tokens equal generate's: {'yes' if same else 'no'}")
    times = common.alternate(variants, device, args.repeats, warmup=1, log=None)
    rows = []
    for name, ts in times.items():
        med = common.median(ts)
        rows.append([name, med * 1e3, med * 1e3 / new, args.batch_size * new / med])
    print()
    print(common.markdown_table(["variant", "ms per call", "ms per token", "new tokens/s"], rows))

    # deterministic: operators dispatched per generated token (independent of machine load)
    print("\n## ATen operators dispatched per generated token (prefill included)\n")
    count_rows = []
    for name in ("generate", "loop-nosync", "hf"):
        total, most = op_counts(variants[name], new, 12)
        count_rows.append([name, f"{total:.0f}", ", ".join(f"{n} {c:.0f}" for n, c in most)])
    print(common.markdown_table(["variant", "ops/token", "most frequent (per token)"], count_rows))

    # per-op profile of the engine
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        variants["generate"]()
        common.sync(device)
    sort = "self_cpu_time_total"
    print(f"\n## torch.profiler, one generate call, sorted by {sort}\n")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.top))

    # per-function Python profile of the engine
    pr = cProfile.Profile()
    pr.enable()
    variants["generate"]()
    common.sync(device)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(args.top)
    print("\n## cProfile, one generate call, sorted by tottime\n")
    print(buf.getvalue())


if __name__ == "__main__":
    main()
