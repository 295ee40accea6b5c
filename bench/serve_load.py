"""Load test of `lmforge serve`: many concurrent clients against one local server.

Each of --clients clients (asyncio, the official `openai.AsyncOpenAI`) sends --requests requests
one after another; the server decodes whatever is in flight together (continuous batching).
Reported: wall time, requests/s, generated tokens/s, latency p50/p99 (and time to first token
with --stream), the server's largest batch, and the error count, which must be 0 (exit code 1
otherwise).

The server is started here in a subprocess (a random-initialised model of --preset with a BPE
tokenizer trained on the embedded corpus, or --model-dir), or reached at --url.

    python bench/serve_load.py                                    # gpt-mini shape, 32 x 20
    python bench/serve_load.py --preset gpt-tiny --max-tokens 32  # a quick run
    python bench/serve_load.py --url http://127.0.0.1:8000 --model my-model --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SERVER = """
import json, sys, torch
from lmforge.serve import serve
threads = int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
extra = json.loads(sys.argv[6])  # only the options given, so older servers run too
serve(sys.argv[1], port=int(sys.argv[2]), max_batch=int(sys.argv[3]), device=sys.argv[4],
      log_level="warning", **extra)
"""


def build_model(preset: str, out: Path, seed: int) -> Path:
    """A random-initialised `preset` with a BPE tokenizer of its vocabulary size."""
    import torch

    from lmforge.config import ModelConfig
    from lmforge.data import default_corpus
    from lmforge.models import Transformer, save_model
    from lmforge.tokenizer import train_tokenizer

    vocab = ModelConfig.from_preset(preset).vocab_size
    tok = train_tokenizer(default_corpus(), vocab_size=vocab)
    tok.save(out)
    torch.manual_seed(seed)
    ids = {"bos_id": tok.bos_id, "eos_id": None, "pad_id": tok.pad_id}  # no EOS: exact lengths
    cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size, **ids)
    save_model(Transformer(cfg), out)
    return out


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            if proc is not None and proc.poll() is not None:
                sys.exit(f"the server exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                sys.exit(f"no server answered at {url} within {timeout:.0f} s")
            time.sleep(0.2)


def prompts(n: int, longest: int, seed: int) -> list[str]:
    """Short prompts cut from the embedded corpus (4 to `longest` words)."""
    import random

    from lmforge.data import default_corpus

    words = " ".join(default_corpus()).split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        at, length = rng.randrange(len(words) - longest), rng.randint(4, longest)
        out.append(" ".join(words[at : at + length]))
    return out


async def client(i: int, args, api, texts: list[str], results: list[dict]) -> None:
    for j in range(args.requests):
        text = texts[(i * args.requests + j) % len(texts)]
        t0 = time.perf_counter()
        record = {"client": i, "error": None, "tokens": 0, "first": None}
        try:
            kwargs = dict(
                model=args.model, max_tokens=args.max_tokens, temperature=args.temperature, seed=j
            )
            if args.endpoint == "chat":
                call = api.chat.completions.create
                kwargs["messages"] = [{"role": "user", "content": text}]
            else:
                call = api.completions.create
                kwargs["prompt"] = text
            if args.stream:
                stream = await call(**kwargs, stream=True, stream_options={"include_usage": True})
                async for chunk in stream:
                    if record["first"] is None:
                        record["first"] = time.perf_counter() - t0
                    if chunk.usage is not None:
                        record["tokens"] = chunk.usage.completion_tokens
            else:
                record["tokens"] = (await call(**kwargs)).usage.completion_tokens
        except Exception as exc:  # every failure is counted and shown, never fatal
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["latency"] = time.perf_counter() - t0
        results.append(record)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))] if xs else float("nan")


async def run_load(args, url: str) -> dict:
    import openai

    api = openai.AsyncOpenAI(
        base_url=url + "/v1", api_key=args.api_key or "none", max_retries=0, timeout=600
    )
    texts = prompts(max(64, args.clients), args.prompt_words, args.seed)
    results: list[dict] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i, args, api, texts, results) for i in range(args.clients)))
    wall = time.perf_counter() - t0
    await api.close()
    ok = [r for r in results if r["error"] is None]
    latencies = [r["latency"] for r in ok]
    firsts = [r["first"] for r in ok if r["first"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    errors = [r["error"] for r in results if r["error"] is not None]
    return {
        "requests": len(results),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "ttft_p50_s": round(statistics.median(firsts), 3) if firsts else None,
        "ttft_p99_s": round(percentile(firsts, 99), 3) if firsts else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="an already running server (else one is started here)")
    p.add_argument("--model", help="model id to request (default: the server's)")
    p.add_argument("--api-key", default=os.environ.get("LMFORGE_API_KEY"))
    p.add_argument("--model-dir", type=Path, help="serve this model dir")
    p.add_argument("--preset", default="gpt-mini", help="random model of this shape")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="server torch threads (0 = default)")
    p.add_argument(
        "--compile",
        choices=("regional", "whole"),
        help="serve with the batch's decode step compiled in this mode (compiled at start-up)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="serve in this dtype (default: the server's own choice, float32 on a CPU)",
    )
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=20, help="per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=24, help="longest prompt, in words")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--stream", action="store_true", help="stream, and measure time to first token")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    args = p.parse_args()

    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            from lmforge.serve import free_port

            model_dir = args.model_dir or build_model(
                args.preset, Path(tmp) / args.preset, args.seed
            )
            port = args.port or free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-c", SERVER, str(model_dir), str(port), str(args.max_batch)]
            extra = {"compile": args.compile, "dtype": args.dtype}
            extra = {k: v for k, v in extra.items() if v}
            cmd += [args.device, str(args.threads), json.dumps(extra)]
            proc = subprocess.Popen(cmd)
        try:
            status = wait_healthy(url, proc, timeout=600.0 if args.compile else 120.0)
            args.model = args.model or status["model"]
            report = asyncio.run(run_load(args, url))
            status = wait_healthy(url, proc)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    report["server_peak_batch"] = status.get("peak_active_rows")
    report["setup"] = {
        "model": args.model_dir.name if args.model_dir else args.model,
        "preset": None if args.model_dir or args.url else args.preset,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "compile": args.compile,
        "dtype": args.dtype or "auto",
        "endpoint": args.endpoint,
        "stream": args.stream,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.device}",
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>20s}: {value}")
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
