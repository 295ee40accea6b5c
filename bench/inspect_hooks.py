"""Do the hook points cost the decode path anything? Greedy decode throughput of the same
gpt-style model (random weights, seed 0) with this checkout's models/ (identity hook points in
every block and attention layer, unhooked) against another checkout's (`--base`, e.g. a main
without them), each in its own process, alternating; plus, in this checkout, decoding while an
identity hook sits on every block's output (the price of hooks when they are used). Each process
also times a plain forward of 128 tokens (the path through every Block and Attention forward).

    python bench/inspect_hooks.py --base /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
from lmforge.config import ModelConfig
from lmforge.generate import GenerationConfig, generate
from lmforge.models import Transformer
preset, new, reps, compile_, hooked = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
torch.set_num_threads(1)
torch.manual_seed(0)
model = Transformer(ModelConfig.from_preset(preset, dropout=0.0, attn_dropout=0.0)).eval()
prompt = torch.randint(0, model.cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
gen = GenerationConfig(max_new_tokens=new, temperature=0.0)
ctx = None
if hooked:
    from lmforge.inspect import hooks
    ctx = hooks(model, {"blocks.*.resid_post": lambda t, n: t})
    ctx.__enter__()
out = generate(model, prompt, gen, compile=compile_)  # warm-up (and compilation)
long = torch.randint(0, model.cfg.vocab_size, (1, 128), generator=torch.Generator().manual_seed(2))
rates, fwd = [], []
with torch.no_grad():
    model(long)
    for _ in range(reps):
        t0 = time.perf_counter()
        out = generate(model, prompt, gen, compile=compile_)
        rates.append(new / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        model(long)
        fwd.append(128 / (time.perf_counter() - t0))
toks = out[0].tolist() if hasattr(out[0], "tolist") else out[0]
print(json.dumps({"rates": rates, "forward": fwd, "tokens": toks}))
"""


def run(tree: Path, hooked: bool, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, args.preset, str(args.new_tokens), str(args.repeats),
           "1" if args.compile else "0", "1" if hooked else "0"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="checkout to compare against")
    ap.add_argument("--preset", default="gpt-mini")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed decodes per process")
    ap.add_argument("--rounds", type=int, default=3, help="alternating process pairs")
    ap.add_argument("--compile", action="store_true", help="decode with compile=True")
    args = ap.parse_args()
    contenders = {"base": (args.base, False), "this": (HERE, False), "this+hooks": (HERE, True)}
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    fwd: dict[str, list[float]] = {k: [] for k in contenders}
    tokens = {}
    load = []
    for r in range(args.rounds):
        names = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in names:
            load.append(os.getloadavg()[0])
            res = run(*contenders[name], args)
            rates[name] += res["rates"]
            fwd[name] += res["forward"]
            tokens[name] = res["tokens"]
    same = tokens["base"] == tokens["this"] == tokens["this+hooks"]
    med = {k: statistics.median(v) for k, v in rates.items()}
    mfwd = {k: statistics.median(v) for k, v in fwd.items()}
    print(f"# hook points and decode speed: {args.preset}, batch 1, {args.new_tokens} new tokens, "
          f"1 thread, compile={args.compile}")  # fmt: skip
    print(f"- load average during the run: {min(load):.1f} .. {max(load):.1f} (shared machine)")
    print(f"- greedy tokens identical across the three: {'yes' if same else 'NO'}")
    print(
        "\n| contender | decode tok/s (median) | vs base | forward of 128 tokens, tok/s | vs base |"
    )
    print("|---|---|---|---|---|")
    for name in contenders:
        print(f"| {name} | {med[name]:.1f} | {med[name] / med['base']:.3f} | {mfwd[name]:.0f} | "
              f"{mfwd[name] / mfwd['base']:.3f} |")  # fmt: skip
    print("\nall decode rates:", {k: [round(r, 1) for r in v] for k, v in rates.items()})


if __name__ == "__main__":
    main()
