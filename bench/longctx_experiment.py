"""The context-extension experiment: pretrain a llama-mini at 256 tokens, extend it 4x with PI
and YaRN (short fine-tunes) and with NTK (no fine-tune), and probe each before and after.

    python bench/longctx_experiment.py --out runs/longctx --device cuda --precision bf16 \
        --pretrain-steps 3000 --extend-steps 200

Pretraining text = the embedded corpus + synthetic passkey documents (so that the small model
learns retrieval within its trained length); every probe then asks how retrieval and perplexity
hold up at 1x, 2x and 4x that length. Results: results.json, results.md, passkey_*.png,
ppl_by_length.png in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmforge.data import default_corpus, split_documents
from lmforge.data.lm import tokens_from_documents
from lmforge.longctx import (
    passkey_probe,
    plot_passkey,
    plot_ppl,
    ppl_by_length,
    streaming_perplexity,
)
from lmforge.longctx.probes import passkey_documents
from lmforge.models import load_model
from lmforge.recipes.extend_context import extend_context
from lmforge.recipes.pretrain import pretrain
from lmforge.tokenizer import Tokenizer


def write_jsonl(docs: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path


def probe(model_dir: Path, lengths: list[int], eval_tokens, trials: int, device: str) -> dict:
    model = load_model(model_dir, device)
    tok = Tokenizer.load(model_dir)
    pk = passkey_probe(model, tok, lengths, trials=trials, seed=123)
    plot_passkey(pk, model_dir / "passkey.png", title=f"passkey: {model_dir.name}")
    ppl = ppl_by_length(model, eval_tokens, [64, 128, 256, 512, 1024], batch_size=4, max_windows=16)
    return {"passkey": pk, "ppl": ppl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/longctx"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--pretrain-steps", type=int, default=3000)
    ap.add_argument("--extend-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--passkey-docs", type=int, default=20000)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--stream-tokens", type=int, default=100_000)
    args = ap.parse_args()
    out: Path = args.out
    t0 = time.time()
    docs = default_corpus() + passkey_documents(args.passkey_docs, seed=0)
    data = write_jsonl(docs, out / "data" / "train.jsonl")
    device_overrides = {"device": args.device, "precision": args.precision}
    base = out / "base-256"
    if not (base / "model.safetensors").exists():
        pretrain(
            [data], base, preset="llama-mini",
            overrides={
                "max_steps": args.pretrain_steps, "batch_size": args.batch_size, "seq_len": 256,
                "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100, "eval_every": 500,
                "vocab_size": 8192, **device_overrides,
            },
        )  # fmt: skip
    tok = Tokenizer.load(base)
    # the held-out documents of pretraining (same split rule and seed), corpus text only
    _, held_out = split_documents(docs, 0.05, seed=0)
    eval_tokens = tokens_from_documents(tok, [d for d in held_out if "pass key" not in d])
    lengths = [256, 512, 1024]
    runs = {"base (no scaling)": base}
    for method, steps in (("ntk", 0), ("pi", args.extend_steps), ("yarn", args.extend_steps)):
        target = out / f"{method}-x4"
        if not (target / "model.safetensors").exists():
            extend_context(
                base, target, factor=4, method=method, data=[data], steps=steps,
                overrides={"batch_size": max(1, args.batch_size // 4), "eval_every": max(1, steps), **device_overrides},
            )  # fmt: skip
        runs[f"{method} x4 ({steps} steps)"] = target
    results = {name: probe(path, lengths, eval_tokens, args.trials, args.device if args.device != "auto" else "cpu")
               for name, path in runs.items()}  # fmt: skip
    plot_ppl({n: r["ppl"] for n, r in results.items()}, out / "ppl_by_length.png", trained_len=256)
    lines = [f"# Context extension experiment ({time.time() - t0:.0f} s)", ""]
    lines += [
        "## Passkey retrieval accuracy (mean over depths 0-100%)",
        "",
        "| model | " + " | ".join(map(str, lengths)) + " |",
        "|---" * (len(lengths) + 1) + "|",
    ]
    for name, r in results.items():
        means = [sum(row) / len(row) for row in r["passkey"].accuracy]
        lines.append(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    lines += ["", "## Perplexity by context length (held-out corpus text)", ""]
    lines += [
        "| model | " + " | ".join(map(str, results[next(iter(results))]["ppl"].lengths)) + " |",
        "|---" * 6 + "|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{p:.1f}" for p in r["ppl"].ppl) + " |")
    # streaming far past the trained length at constant memory: sinks + window vs window only
    stream_tokens = tokens_from_documents(tok, default_corpus())[: args.stream_tokens + 1]
    base_model = load_model(base, args.device if args.device != "auto" else "cpu")
    lines += [
        "",
        f"## Streaming {len(stream_tokens) - 1:,} tokens through a 4 + 252 token cache",
        "",
    ]
    lines += [
        "| cache | perplexity | first 10% | last 10% | cache slots |",
        "|---|---|---|---|---|",
    ]
    streams = {}
    for name, sinks in (("4 sinks + 252 recent", 4), ("256 recent, no sinks", 0)):
        r = streaming_perplexity(
            base_model, stream_tokens, window=256 - sinks, sinks=sinks, chunk=64
        )
        streams[name] = r
        lines.append(
            f"| {name} | {r.ppl:.1f} | {r.ppl_by_segment[0][1]:.1f} | {r.ppl_by_segment[-1][1]:.1f} | {r.cache_slots} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(
        {n: {"passkey": r["passkey"].accuracy, "lengths": lengths, "ppl": r["ppl"].ppl, "ppl_lengths": r["ppl"].lengths}
         for n, r in results.items()} | {"streaming": {n: r.__dict__ for n, r in streams.items()}}, indent=2))  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
