"""Weight-only quantization at a real model's size: lmforge fp32 / int8 / int4 against llama.cpp
(llama-cpp-python) Q8_0 / Q4_0 on the same weights, plus the memory bandwidth of the box.

Model: a Llama of SmolLM2-135M's shape (30 layers, d_model 576, 9 heads, 3 KV heads, d_ff 1536,
vocab 49152, tied embeddings, RoPE theta 1e5) with random weights. Greedy, batch 1, a random
`--prompt-len`-token prompt, exactly `--new-tokens` new tokens (prefill included in the time, as
a user sees it), `--threads` threads for everyone. lmforge's int8 and int4 models are built with
`quantize_model` (what `lmforge quantize` writes); llama.cpp reads the fp32 model exported by
`lmforge convert --to-gguf --type q8_0|q4_0|f32`. Contenders alternate within each repeat.
lmforge's int8 and int4 decode with fbgemm's dynamic int8 kernel (activations quantized to 7
bits at each step, as llama.cpp's Q8_0 / Q4_0 matmuls quantize them to 8; int4 through an int8
copy of its weight), see `lmforge.models.quant`: eager, and with `generate(..., compile=True)`
(the whole decode step compiled, the kernel called as the `lmforge::int8_dynamic_linear`
operator; each model's first compiled call, compiling included, is timed and printed).

Same greedy text (issue 11, item 4): llama.cpp's greedy tokens on the F32 and Q8_0 files are
compared with lmforge's on the same weights (the fp32 model, and the Q8_0 file read back with
`lmforge convert --from-gguf`, i.e. its dequantized weights).

Next to each rate: the bytes of weights one decode step reads (every matrix once; the tied
embedding once more as the LM head, in the head's storage), the bandwidth that implies, and
that as a share of the read bandwidth measured in the same run (a sum over a 1 GiB buffer on
the same threads): the physical limit of batch-1 decoding.

    python bench/quant_real.py                          # speed table (needs llama-cpp-python)
    python bench/quant_real.py --no-compile             # eager contenders only (no compiling)
    python bench/quant_real.py --gemv                   # one linear at batch 1: every kernel
    python bench/quant_real.py --quality RUN_DIR [--data FILE]  # perplexity fp32/int8/int4
(--quality without --data scores the documents `lmforge pretrain` held out of its embedded
corpus: a model pretrained there has not seen them)
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from torch import nn

from lmforge.compress import quantize_model
from lmforge.config import ModelConfig
from lmforge.generate import GenerationConfig, generate
from lmforge.models import Transformer, save_model

GGUF_BYTES_PER_32 = {"f32": 128, "q8_0": 34, "q4_0": 18}


def bytes_per_token(model: nn.Module) -> int:
    """Weights one decode step reads: every linear (quantized buffers or float weight, scales
    included) and every norm; the embedding only as a head when the head is tied to it. An int4
    linear that decodes through its derived int8 copy (`Int4Linear._decode`) reads the copy."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            continue
        read = getattr(m, "_decode", None) or m
        for name, t in list(read.named_parameters(recurse=False)) + list(
            read.named_buffers(recurse=False)
        ):
            if name.startswith("_") or t.dtype == torch.bool:
                continue  # derived kernel layouts are counted through their stored twins
            total += t.numel() * t.element_size()
    return total


def gguf_bytes_per_token(cfg: ModelConfig, kind: str) -> int:
    """The same count for a GGUF file: every matrix (token_embd read once as the output)."""
    per_layer = 2 * cfg.d_model * cfg.n_head * cfg.head_dim
    per_layer += 2 * cfg.d_model * cfg.n_kv_head * cfg.head_dim + 3 * cfg.d_model * cfg.d_ff
    weights = cfg.n_layer * per_layer + cfg.vocab_size * cfg.d_model
    norms = (2 * cfg.n_layer + 1) * cfg.d_model * 4
    return weights // 32 * GGUF_BYTES_PER_32[kind] + norms


def smol_dir(root: Path) -> tuple[Path, Transformer]:
    """The SmolLM2-shaped model with a small byte-level BPE tokenizer (padded vocabulary)."""
    from lmforge.tokenizer import train_tokenizer

    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog {i % 13}." for i in range(200)]
    tok = train_tokenizer(lines, vocab_size=512)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_dict({**common.SMOLLM2_135M, "bos_id": tok.bos_id})).eval()
    out = root / "smol"
    tok.save(out)
    save_model(model, out)
    return out, model


def llama_cpp_call(path: Path, prompt: list[int], new: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads,
        n_batch=512, verbose=False,
    )  # fmt: skip

    def run() -> list[int]:
        out = []
        for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(t)
            if len(out) == new:
                break
        return out

    return run


def llama_cpp_probe(path: Path, prompt: list[int], threads: int) -> int:
    """Exit code of a child process that loads `path` in llama.cpp and decodes two tokens: a
    llama.cpp build whose CPU kernels use instructions this machine refuses (SIGILL) fails here
    instead of killing the benchmark."""
    code = (
        "import sys; from llama_cpp import Llama; "
        f"llm = Llama(model_path={str(path)!r}, n_ctx=128, n_threads={threads}, verbose=False); "
        f"g = llm.generate({prompt!r}, top_k=1, temp=0.0); next(g); next(g)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode


def speed(args: argparse.Namespace) -> None:
    device = common.setup("cpu", args.threads)
    common.print_machine(device)
    root = Path(tempfile.mkdtemp(prefix="quant_real_"))
    model_dir, fp32 = smol_dir(root)
    cfg = fp32.cfg
    prompt = torch.randint(0, 512, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    gen = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    models = {
        "lmforge fp32": fp32,
        "lmforge int8": quantize_model(copy.deepcopy(fp32), "int8"),
        f"lmforge int4 (g{args.group_size})": quantize_model(
            copy.deepcopy(fp32), "int4", group_size=args.group_size
        ),
    }
    sizes = {name: bytes_per_token(m) for name, m in models.items()}
    outputs: dict[str, list[int]] = {}

    def lm_call(name: str, m: nn.Module, compile: bool):
        def run():
            with torch.no_grad():
                outputs[name] = generate(m, prompt, gen, compile=compile)[0]

        return run

    calls = {name: lm_call(name, m, False) for name, m in models.items()}
    if args.compile:
        for name, m in list(models.items()):
            t0, c0 = time.perf_counter(), time.process_time()
            lm_call(name, m, True)()
            print(f"{name} compile=True: first call {time.perf_counter() - t0:.1f} s wall, "
                  f"{time.process_time() - c0:.1f} s CPU, load average {os.getloadavg()[0]:.1f}",
                  flush=True)  # fmt: skip
            calls[f"{name} compiled"] = lm_call(f"{name} compiled", m, True)
            sizes[f"{name} compiled"] = sizes[name]
    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
        print("llama-cpp-python is not installed: no llama.cpp contenders")
    if have_llama:
        from lmforge.interop.gguf import import_gguf
        from lmforge.interop.gguf_export import export_gguf
        from lmforge.models import load_model

        ids = prompt[0].tolist()
        for kind in ("f32", "q8_0", "q4_0"):
            f = export_gguf(model_dir, root / f"smol-{kind}.gguf", kind)
            if kind == "q8_0":  # the same weights as llama.cpp reads: the file, dequantized
                back = load_model(import_gguf(f, root / "from-q8_0"))
                with torch.no_grad():
                    outputs["lmforge from Q8_0 file"] = generate(back, prompt, gen)[0]
            name = f"llama.cpp {kind.upper()}"
            code = llama_cpp_probe(f, ids, args.threads)
            if code:
                print(f"{name}: llama.cpp died in a probe run (exit code {code}), left out")
                continue
            run = llama_cpp_call(f, ids, args.new_tokens, args.threads)

            def keep(run=run, name=name):
                outputs[name] = run()

            calls[name] = keep
            sizes[name] = gguf_bytes_per_token(cfg, kind)

    print(f"load average before: {os.getloadavg()}", flush=True)
    bandwidth = [common.read_bandwidth(mib=1024)]
    times = common.alternate(calls, device, args.repeats, warmup=1)
    bandwidth.append(common.read_bandwidth(mib=1024))
    print(f"load average after: {os.getloadavg()}", flush=True)
    bw = common.median(bandwidth)
    rows = []
    base = {"int8": "llama.cpp Q8_0", "int4": "llama.cpp Q4_0", "fp32": "llama.cpp F32"}
    rate = {n: args.new_tokens / common.median(t) for n, t in times.items()}
    for name, t in times.items():
        ref = next((v for k, v in base.items() if k in name and "lmforge" in name), None)
        vs = f"{rate[name] / rate[ref]:.2f}x" if ref in rate else "-"
        moved = rate[name] * sizes[name]
        rows.append([
            name, f"{rate[name]:.1f}", common.spread([args.new_tokens / x for x in t]),
            f"{sizes[name] / 1e6:.0f} MB", f"{moved / 1e9:.1f} GB/s", f"{moved / bw:.0%}", vs,
        ])  # fmt: skip
    print(f"\nread bandwidth measured in this run: {bw / 1e9:.1f} GB/s (sum over 1 GiB)")
    print(common.markdown_table(
        ["contender", "tokens/s", "spread", "weights/token", "weights read", "of bandwidth",
         "vs llama.cpp same bits"], rows))  # fmt: skip
    if have_llama:
        pairs = [("lmforge fp32", "llama.cpp F32"), ("lmforge from Q8_0 file", "llama.cpp Q8_0"),
                 ("lmforge int8", "llama.cpp Q8_0"), ("lmforge int8 compiled", "lmforge int8")]  # fmt: skip
        for ours, theirs in pairs:
            a, b = outputs.get(ours, []), outputs.get(theirs, [])
            if not a or not b:
                print(f"greedy tokens, {ours} vs {theirs}: not compared ({theirs} did not run)")
                continue
            agree = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            same = a == b and len(a) == args.new_tokens
            print(f"greedy tokens, {ours} vs {theirs}: "
                  f"{'identical' if same else f'first {agree} of {args.new_tokens} equal'}")  # fmt: skip


GEMV_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]  # (d_out, d_in)


def gemv_contenders(lin: nn.Linear) -> dict[str, object]:
    """Every batch-1 kernel for one linear: fp32 MKL, PyTorch's native weight-only int8/int4
    kernels, fbgemm's dynamic int8, the weight-only product-and-sum under torch.compile, the
    dequantize-then-F.linear form under torch.compile, and torchao's int8 configs."""
    import torch.nn.functional as F

    from lmforge.models.quant import Int8Linear, quantize_int4

    def product_and_sum(x):  # y_o = s_o sum_i x_i q_oi: inductor fuses it into one reduction
        return (x.unsqueeze(-2) * w8.to(x.dtype)).sum(-1) * s8

    i8 = Int8Linear.from_linear(lin)
    w8, s8 = i8.weight, i8.scales
    q4, s4, z4 = quantize_int4(lin.weight, 64)
    packed4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4.to(torch.int32), 1)
    sz4 = torch.stack([s4.t(), z4.t()], dim=-1).contiguous()
    out: dict[str, object] = {
        "fp32 F.linear (MKL)": lambda x: F.linear(x, lin.weight),
        "native _weight_int8pack_mm": lambda x: torch._weight_int8pack_mm(x, w8, s8),
        "native _weight_int8pack_mm, bf16 activations": lambda x: torch._weight_int8pack_mm(
            x.bfloat16(), w8, s8.bfloat16()
        ),
        "native _weight_int4pack_mm_for_cpu g64": lambda x: (
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed4, 64, sz4)
        ),
        "native _weight_int4pack_mm_for_cpu g64, bf16 activations": lambda x: (
            torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed4, 64, sz4.bfloat16())
        ),
        "fbgemm linear_dynamic (lmforge int8)": i8,
        "compiled lmforge int8 (the lmforge::int8_dynamic_linear operator)": torch.compile(
            i8, fullgraph=True
        ),
        "compiled product-and-sum int8": torch.compile(product_and_sum, fullgraph=True),
        "compiled F.linear(w.to(f32)) * s": torch.compile(
            lambda x: F.linear(x, w8.to(x.dtype)) * s8, fullgraph=True
        ),
    }
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        for name, config in [
            ("torchao Int8WeightOnly", Int8WeightOnlyConfig()),
            ("torchao Int8DynamicActivationInt8Weight", Int8DynamicActivationInt8WeightConfig()),
        ]:
            m = copy.deepcopy(lin)
            quantize_(m, config)
            out[name] = m
    except Exception as e:  # noqa: BLE001 - a library that does not run here is reported
        print(f"torchao contenders skipped: {type(e).__name__}: {str(e)[:120]}")
    return out


def gemv(args: argparse.Namespace) -> None:
    """Microseconds of one batch-1 linear of this model's shapes, per kernel (median of
    --gemv-calls calls, and the fastest), with the relative error against fp32."""
    common.setup("cpu", args.threads)
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    for d_out, d_in in GEMV_SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(d_in, d_out, bias=False).eval()
        x = torch.randn(1, d_in)
        with torch.no_grad():
            ref = lin(x)
            base = None
            for name, fn in gemv_contenders(lin).items():
                y = fn(x)
                err = ((y - ref).abs().max() / ref.abs().max()).item()
                for _ in range(5):
                    fn(x)
                ts = []
                for _ in range(args.gemv_calls):
                    t0 = time.perf_counter()
                    fn(x)
                    ts.append(time.perf_counter() - t0)
                med, best = common.median(ts) * 1e6, min(ts) * 1e6
                base = base or med
                rows.append([f"{d_out}x{d_in}", name, f"{med:.0f}", f"{best:.0f}",
                             f"{base / med:.2f}x", f"{err:.1e}"])  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(common.markdown_table(
        ["d_out x d_in", "kernel", "median us", "min us", "vs fp32 (median)", "rel. error"],
        rows))  # fmt: skip


def quality(args: argparse.Namespace) -> None:
    """Held-out perplexity of a trained model, fp32 vs `lmforge quantize` int8 / int4."""
    from lmforge.evaluate.perplexity import perplexity
    from lmforge.recipes.quantize import quantize_checkpoint

    common.setup("cpu", args.threads)
    root = Path(tempfile.mkdtemp(prefix="quant_quality_"))
    dirs = {"fp32": Path(args.quality)}
    dirs["int8"] = quantize_checkpoint(args.quality, root / "int8", "int8").out_dir
    for g in (128, 64, 32):
        dirs[f"int4 g{g}"] = quantize_checkpoint(
            args.quality, root / f"int4-{g}", "int4", g
        ).out_dir
    data = args.data
    if not data:  # the documents `lmforge pretrain` held out of the embedded corpus (seed 0)
        from lmforge.data import default_corpus, split_documents

        _, valid = split_documents(default_corpus(), 0.05, seed=0)
        (root / "held_out.txt").write_text("\n\n".join(valid), encoding="utf-8")
        data = [root / "held_out.txt"]
    ppl = {name: perplexity(d, data, device="cpu") for name, d in dirs.items()}
    # the decode kernel (activations quantized too, per tensor over each piece of DECODE_ROWS
    # rows; int4 through its int8 copy) on every batch, as prompts of up to KERNEL_ROWS rows run
    from lmforge.models import quant

    quant.KERNEL_ROWS = quant.Int8Linear.dynamic_rows = 1 << 40
    for name in ("int8", "int4 g64"):
        ppl[f"{name}, kernel on every row"] = perplexity(dirs[name], data, device="cpu")
    base = ppl["fp32"].perplexity
    rows = [[name, f"{r.perplexity:.3f}", f"{(r.perplexity / base - 1):+.2%}", r.tokens]
            for name, r in ppl.items()]  # fmt: skip
    print(f"load average: {os.getloadavg()}")
    print(common.markdown_table(["model", "perplexity", "vs fp32", "tokens"], rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--group-size", type=int, default=64, help="int4 group (576 = 9 x 64)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time generate(..., compile=True) for each lmforge model (default: on)",
    )
    p.add_argument("--quality", help="a trained causal LM dir: held-out perplexity instead")
    p.add_argument("--gemv", action="store_true", help="one linear at batch 1, every kernel")
    p.add_argument("--gemv-calls", type=int, default=200)
    p.add_argument(
        "--data",
        nargs="+",
        help="held-out text files for --quality (default: the "
        "embedded corpus's validation documents)",
    )
    args = p.parse_args()
    if args.quality:
        quality(args)
    elif args.gemv:
        gemv(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
