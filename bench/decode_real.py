"""Decode speed on a real-sized model: a Llama of SmolLM2-135M's shape (random weights).

    30 layers, d_model 576, 9 heads, 3 KV heads, d_ff 1536, vocab 49152, tied embeddings,
    RoPE theta 100000; greedy, a --prompt-len-token prompt, --new-tokens new tokens, fp32
    (--dtype bf16: both models' weights cast to bfloat16).

Contenders, one process, interleaved repeats, medians (prefill included, as a user sees it):
    hf        Hugging Face `LlamaForCausalLM.generate` on the same weights
    eager     `lmforge.generate.generate` (the model's own decode step, no compilation)
    regional  the same with compile="regional" (one compiled run of 6 blocks shared by the 30 layers)
    whole     the same with compile="whole" (the step as one graph, frozen weights)
(each compiled form's first call, compilation included, is printed) and the same at batch 8
(hf vs eager, and the compiled forms with --compile-batch).

Next to each rate: the bytes one decode step reads (every weight once, the LM head included,
plus the KV cache at the average length) and the memory bandwidth measured in this run (sum of
a 512 MiB float32 tensor, the same thread count), so rate x bytes / bandwidth is the fraction of
the memory-bandwidth limit the contender reaches.

    python bench/decode_real.py                       # 2 threads, batch 1 and 8, both compiled forms
    python bench/decode_real.py --compile-mode regional --threads 1 --batches 1
    python bench/decode_real.py --no-compile --repeats 2
    python bench/decode_real.py --dtype bf16 --batches 8 --compile-batch --compile-mode whole
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import sys
import tempfile
import time

# a cold compile, as on a first run: inductor's on-disk caches (compiled graphs and kernels,
# shared by every process of the user) start empty unless --warm-cache is given; set before
# torch is imported
if "--warm-cache" not in sys.argv:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="decode_real_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import common  # noqa: E402
import torch  # noqa: E402

from lmforge.generate import GenerationConfig, generate  # noqa: E402
from lmforge.models import Transformer  # noqa: E402


def llama_pair(seed: int = 0) -> tuple[Transformer, torch.nn.Module]:
    """The lmforge model and a `LlamaForCausalLM` with identical weights, in eval mode."""
    ours, hf = common.llama_pair(seed=seed)
    return ours.eval(), hf.eval()


def cpu_seconds() -> float:
    """CPU seconds this process and its finished children have used: a compile time that a
    loaded box stretches less than the wall clock (inductor's compile workers still running in
    a pool are not counted until they exit)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def step_bytes(model: Transformer, batch: int, context: float) -> float:
    """Bytes one decode step reads: each weight once (the embedding lookup reads one row per
    token, but the tied LM head reads the whole matrix) + K and V of `context` cached tokens."""
    cfg = model.cfg
    weights = sum(
        p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()
    )
    width = next(model.parameters()).element_size()  # the cache has the weights' dtype
    kv = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * context * width * batch
    return weights + kv


def ops_per_step(model: Transformer, prompts: torch.Tensor) -> int:
    """ATen operators one eager decode step dispatches (after a prefill of `prompts`): the
    per-token host overhead that a compiled step removes."""
    from profile_decode import OpCounter

    from lmforge.generate.core import prefill
    from lmforge.generate.inputs import start

    begin = start(model, prompts.tolist(), GenerationConfig(max_new_tokens=2))
    with torch.inference_mode():
        cache = model.new_cache(prompts.size(0), begin.cache_len)
        token = prefill(model, begin.ids, begin.mask, cache).argmax(-1)[:, None]
        with OpCounter() as counter:
            model.decode_step(token, cache)
    return sum(counter.counts.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument(
        "--compile-mode",
        default="regional,whole",
        help="compiled forms to time, comma-separated: regional, whole",
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="keep inductor's on-disk cache (default: a fresh one, so the first call compiles cold)",
    )
    p.add_argument("--compile-batch", action="store_true", help="also compile at batch > 1")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="both models' weights")
    args = p.parse_args()
    device = common.setup("cpu", args.threads)
    print(f"load average before: {os.getloadavg()}")
    cache = "warm (the user's own)" if args.warm_cache else "cold (fresh directory)"
    print(f"inductor cache: {cache} {os.environ.get('TORCHINDUCTOR_CACHE_DIR', '')}")
    ours, hf = llama_pair()
    if args.dtype == "bf16":
        ours, hf = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
    new, plen = args.new_tokens, args.prompt_len
    bw = common.read_bandwidth(repeats=7)
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s ({args.threads} threads)")
    gen = GenerationConfig(max_new_tokens=new, temperature=0.0)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        torch.manual_seed(batch)
        prompts = torch.randint(0, ours.cfg.vocab_size, (batch, plen))
        print(f"batch {batch}: {ops_per_step(ours, prompts)} ATen operators per eager decode step")

        def hf_run(prompts=prompts):
            with torch.no_grad():
                out = hf.generate(
                    input_ids=prompts,
                    attention_mask=torch.ones_like(prompts),
                    do_sample=False,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    eos_token_id=None,
                    pad_token_id=0,
                )
            return out[:, plen:].tolist()

        contenders = {
            "hf": hf_run,
            "eager": lambda prompts=prompts: generate(ours, prompts, gen),
        }
        modes = [] if args.no_compile else args.compile_mode.split(",")
        for mode in modes if batch == 1 or args.compile_batch else []:
            t0, c0 = time.perf_counter(), cpu_seconds()
            generate(ours, prompts, gen, compile=mode)
            compile_s, compile_cpu = time.perf_counter() - t0, cpu_seconds() - c0
            print(
                f"batch {batch}: compile={mode!r} first call {compile_s:.1f} s wall, "
                f"{compile_cpu:.1f} s CPU (compiling included; load average "
                f"{os.getloadavg()[0]:.1f})",
                flush=True,
            )
            contenders[mode] = lambda prompts=prompts, mode=mode: generate(
                ours, prompts, gen, compile=mode
            )
        outs = {name: fn() for name, fn in contenders.items()}
        same = {name: outs[name] == outs["hf"] for name in outs}
        print(f"batch {batch}: same tokens as HF: {same}")
        times = common.alternate(contenders, device, args.repeats, warmup=0)
        per_token = step_bytes(ours, batch, plen + new / 2) / batch
        base = batch * new / common.median(times["hf"])
        for name, ts in times.items():
            rate = batch * new / common.median(ts)
            rows.append(
                [
                    batch,
                    name,
                    f"{rate:.1f}",
                    f"{rate / base:.2f}x",
                    f"{per_token / 1e6:.0f} MB",
                    f"{rate * per_token / bw:.0%}",
                    common.spread([batch * new / t for t in ts]),
                ]
            )
    headers = ["batch", "contender", "tokens/s", "vs HF", "bytes/token", "of bw limit", "spread"]
    print()
    print(common.markdown_table(headers, rows))
    print(
        f"\nbandwidth {bw / 1e9:.1f} GB/s; {args.dtype} limit at batch 1: "
        f"{bw / step_bytes(ours, 1, plen + new / 2):.1f} tokens/s"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
