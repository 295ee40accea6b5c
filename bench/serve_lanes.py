"""The server's lanes: speculative decoding (`lmforge serve --draft`) against the plain server,
lightly loaded and under load, and beam search through the server against the Python API.

Two servers run side by side as subprocesses on the same random-initialised target (--preset,
a BPE tokenizer trained on the embedded corpus), one with a draft: the target's embeddings,
first --draft-layers blocks, final norm and LM head (an early-exit draft; with random weights its
acceptance says nothing of a trained pair, so the acceptance is printed next to every figure).

    light   one client, greedy requests one after another, the two servers alternating:
            median latency and tokens/s per request, the draft's acceptance
    load    --clients clients at once, --requests greedy requests each, on each server in turn
            (twice, alternating): wall time and generated tokens/s
    beam    num_beams = 4 through the plain server vs `generate(..., num_beams=4)` in this
            process: median latency (the server's overhead on a beam request)

    python bench/serve_lanes.py                        # gpt-mini, 2 layers of draft, 1 thread each
    python bench/serve_lanes.py --preset gpt-tiny --max-tokens 32 --repeats 3   # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import build_model, prompts, wait_healthy  # noqa: E402

SERVER = """
import sys, torch
from lmforge.serve import serve
torch.set_num_threads(int(sys.argv[4]))
draft = sys.argv[3] or None
serve(sys.argv[1], port=int(sys.argv[2]), device="cpu", log_level="warning", draft=draft,
      draft_k=int(sys.argv[5]))
"""


def early_exit_draft(target_dir: Path, out: Path, layers: int) -> Path:
    """The target cut after `layers` blocks (same tokenizer, embeddings, final norm, head)."""
    import torch

    from lmforge.models import load_model, save_model
    from lmforge.models.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    target = load_model(target_dir)
    cfg = type(target.cfg).from_dict({**target.cfg.to_dict(), "n_layer": layers})
    draft = Transformer(cfg)
    own = draft.state_dict()
    with torch.no_grad():
        draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in own})
    Tokenizer.load(target_dir).save(out)
    save_model(draft, out)
    return out


def start(model: Path, port: int, draft: Path | None, threads: int, k: int) -> subprocess.Popen:
    argv = [sys.executable, "-c", SERVER, str(model), str(port), str(draft or ""), str(threads)]
    return subprocess.Popen([*argv, str(k)], env={**os.environ, "PYTHONPATH": os.getcwd()})


async def one(api, text: str, max_tokens: int, **extra) -> tuple[float, int, dict]:
    t0 = time.perf_counter()
    r = await api.completions.create(
        model="target", prompt=text, max_tokens=max_tokens, temperature=0, extra_body=extra
    )
    usage = r.usage.model_dump()
    return time.perf_counter() - t0, usage["completion_tokens"], usage.get("speculative") or {}


async def light(apis: dict, texts: list[str], args) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in apis}
    for i in range(args.repeats):
        for name in list(apis)[:: 1 if i % 2 == 0 else -1]:  # alternate who goes first
            out[name].append(await one(apis[name], texts[i % len(texts)], args.max_tokens))
    return out


async def load(api, texts: list[str], args) -> tuple[float, int]:
    async def client(c: int) -> int:
        n = 0
        for j in range(args.requests):
            n += (await one(api, texts[(c * args.requests + j) % len(texts)], args.max_tokens))[1]
        return n

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(client(c) for c in range(args.clients))))
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt-mini")
    ap.add_argument("--draft-layers", type=int, default=2)
    ap.add_argument("--draft-k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import openai
    import torch

    from lmforge.generate import GenerationConfig, generate
    from lmforge.models import load_model
    from lmforge.serve import free_port
    from lmforge.tokenizer import Tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="serve_lanes_"))
    target = build_model(args.preset, tmp / "target", args.seed)
    draft = early_exit_draft(target, tmp / "draft", args.draft_layers)
    ports = {"plain": free_port(), "draft": free_port()}
    procs = {
        "plain": start(target, ports["plain"], None, args.threads, args.draft_k),
        "draft": start(target, ports["draft"], draft, args.threads, args.draft_k),
    }
    try:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, url in urls.items():
            wait_healthy(url, procs[name])
        texts = prompts(64, 12, args.seed)
        print(f"{args.preset} target, {args.draft_layers}-layer early-exit draft, k={args.draft_k}")
        print(f"load average before: {os.getloadavg()}")

        async def run() -> None:
            apis = {
                name: openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
                for name, url in urls.items()
            }
            for api in apis.values():  # warm-up
                await one(api, texts[0], 8)
            got = await light(apis, texts, args)
            lat = {n: statistics.median(r[0] for r in rs) for n, rs in got.items()}
            rate = {n: statistics.median(r[1] / r[0] for r in rs) for n, rs in got.items()}
            spec = [r[2] for r in got["draft"] if r[2]]
            drafted = sum(s["draft_tokens"] for s in spec)
            accepted = sum(s["accepted_tokens"] for s in spec)
            print(
                f"light  ({args.repeats} greedy requests of {args.max_tokens} tokens, medians): "
                f"plain {lat['plain'] * 1000:.0f} ms {rate['plain']:.1f} tok/s | draft "
                f"{lat['draft'] * 1000:.0f} ms {rate['draft']:.1f} tok/s | latency ratio "
                f"plain/draft {lat['plain'] / lat['draft']:.2f}x | {len(spec)}/{args.repeats} "
                f"in the lane, acceptance {accepted / max(drafted, 1):.1%}"
            )
            walls: dict[str, list[float]] = {"plain": [], "draft": []}
            for order in (("plain", "draft"), ("draft", "plain")):
                for name in order:
                    wall, tokens = await load(apis[name], texts, args)
                    walls[name].append(tokens / wall)
            print(
                f"load   ({args.clients} clients x {args.requests} requests, tokens/s, 2 runs "
                f"each): plain {' '.join(f'{x:.1f}' for x in walls['plain'])} | draft "
                f"{' '.join(f'{x:.1f}' for x in walls['draft'])} | ratio draft/plain "
                f"{statistics.mean(walls['draft']) / statistics.mean(walls['plain']):.2f}x"
            )
            model, tok = load_model(target).eval(), Tokenizer.load(target)
            torch.set_num_threads(args.threads)
            gen = GenerationConfig(max_new_tokens=args.max_tokens, num_beams=4)
            served, local = [], []
            for i in range(max(3, args.repeats // 2)):
                text = texts[i]
                served.append((await one(apis["plain"], text, args.max_tokens, num_beams=4))[0])
                ids = [tok.bos_id, *tok.encode(text)]
                t0 = time.perf_counter()
                generate(model, [ids], gen)
                local.append(time.perf_counter() - t0)
            s, p = statistics.median(served), statistics.median(local)
            print(
                f"beam   (num_beams=4, {args.max_tokens} tokens, medians): server "
                f"{s * 1000:.0f} ms | Python API {p * 1000:.0f} ms | ratio {s / p:.2f}x"
            )
            for api in apis.values():
                await api.close()

        asyncio.run(run())
        print(f"load average after: {os.getloadavg()}")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
