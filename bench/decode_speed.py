"""Decode throughput: `lmforge.generate.generate` vs Hugging Face `model.generate`, greedy, on the
same weights (a gpt-style lmforge model and a `GPT2LMHeadModel` built from it).

Each call generates exactly `--new-tokens` tokens (no EOS in either config) after a random
`--prompt-len`-token prompt per row; the figure is new tokens x batch / seconds of the whole call
(prefill included, as a user sees it). Contenders alternate within each repeat; medians are
reported, with the ratio lmforge / Hugging Face. Both must produce the same greedy tokens.

    python bench/decode_speed.py                                  # gpt-mini, CPU, fp32, batch 1 and 8
    python bench/decode_speed.py --compile                        # adds lmforge with compile=True

lmforge decodes with the model's own step (`Transformer.decode_step`); compile=True compiles that
step (fullgraph, `lmforge.generate.static`). The first call of each contender is timed and
reported on its own (for compile=True it includes compiling), and is left out of the rates.
    python bench/decode_speed.py --device cuda --dtype bf16 --compile --hf-static
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch
from torch import Tensor, nn

from lmforge.generate import GenerationConfig, generate


def lmforge_call(model: nn.Module, prompts: Tensor, new: int, compile: bool) -> Callable:
    gen = GenerationConfig(max_new_tokens=new, temperature=0.0)
    return lambda: generate(model, prompts, gen, compile=compile)


def hf_call(model: nn.Module, prompts: Tensor, new: int, static: bool) -> Callable:
    extra = {"cache_implementation": "static"} if static else {}

    def run() -> list[list[int]]:
        out = model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            eos_token_id=None,
            pad_token_id=0,
            **extra,
        )
        return out[:, prompts.size(1) :].tolist()

    return run


def compare(ours: list[list[int]], theirs: list[list[int]]) -> tuple[bool, str]:
    """(all equal, a note on the first row that differs)."""
    for row, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            return False, f"row {row} first differs at new token {at} (lengths {len(a)}/{len(b)})"
    return True, "all rows identical"


def near_tie(model: nn.Module, prompt: Tensor, tokens: list[int], at: int) -> float:
    """Gap between the top two logits where greedy decoding diverged (small = a near tie)."""
    ids = torch.cat([prompt, torch.tensor(tokens[:at], device=prompt.device)])[None]
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt-mini")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights' dtype")
    ap.add_argument("--compile", action="store_true", help="add lmforge with compile=True")
    ap.add_argument("--hf-static", action="store_true", help="add HF with a static KV cache")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    device = common.setup(args.device, args.threads)
    ours, hf = common.gpt_pair(args.preset, device, common.DTYPES[args.dtype], eos_id=None)
    ours.eval()
    hf.eval()
    print(
        f"# decode speed: {args.preset}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy"
    )
    common.print_machine(device)
    print(f"- parameters: {common.n_params(ours):,}; dtype {args.dtype}")

    results: dict[str, dict] = {}
    rows, first_rows = [], []
    gen = torch.Generator().manual_seed(2)
    for batch in args.batch_sizes:
        vocab = ours.cfg.vocab_size
        prompts = torch.randint(0, vocab, (batch, args.prompt_len), generator=gen).to(device)
        contenders = {"lmforge": lmforge_call(ours, prompts, args.new_tokens, False)}
        if args.compile:
            contenders["lmforge-compile"] = lmforge_call(ours, prompts, args.new_tokens, True)
        contenders["hf"] = hf_call(hf, prompts, args.new_tokens, False)
        if args.hf_static:
            contenders["hf-static"] = hf_call(hf, prompts, args.new_tokens, True)

        print(f"\n## batch {batch}")
        outputs, first = {}, {}
        for name, fn in contenders.items():  # also the first warm-up
            t0 = time.perf_counter()
            outputs[name] = fn()
            common.sync(device)
            first[name] = time.perf_counter() - t0
            print(f"- first call {name}: {first[name]:.2f} s (compilation included, if any)")
        for name, toks in outputs.items():
            if any(len(t) != args.new_tokens for t in toks):
                raise RuntimeError(f"{name} did not produce {args.new_tokens} tokens per row")
        match = {}
        for name in outputs:
            if name == "hf":
                continue
            same, note = compare(outputs[name], outputs["hf"])
            if not same:
                row = int(note.split()[1])
                at = int(note.split(" at new token ")[1].split()[0])
                gap = near_tie(ours, prompts[row], outputs[name][row], at)
                note += f"; top-2 logit gap there {gap:.2e}"
            match[name] = same
            print(f"- greedy tokens {name} vs hf match: {'yes' if same else 'no'} ({note})")

        times = common.alternate(contenders, device, args.repeats, max(0, args.warmup - 1))
        rates = {n: [batch * args.new_tokens / t for t in ts] for n, ts in times.items()}
        ratios = common.ratio_columns(rates, "hf")
        for n, r in rates.items():
            same = "-" if n == "hf" else ("yes" if match[n] else "no")
            rows.append([batch, n, common.median(r), common.spread(r), *ratios[n], same])
            first_rows.append([batch, n, f"{first[n]:.2f}", f"{common.median(times[n]):.3f}"])
        results[str(batch)] = {"tokens_per_s": rates, "match": match, "first_call_s": first}

    print()
    headers = [
        "batch",
        "generator",
        "new tokens/s (median)",
        "range",
        "vs hf",
        "paired",
        "best/best",
    ]
    headers.append("same tokens")
    print(common.markdown_table(headers, rows))
    print(
        "\nFirst call (untimed warm-up above; for compile=True it includes compiling the step), "
        "end to end:\n"
    )
    print(
        common.markdown_table(
            ["batch", "generator", "first call, s", "later calls, s (median)"], first_rows
        )
    )
    if args.json is not None:
        common.write_json(args.json, args, device, results)


if __name__ == "__main__":
    main()
