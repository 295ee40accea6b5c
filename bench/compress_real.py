"""Compression measured on real models: prune -> distill -> quantize, and pruning curves.

Two experiments, each one JSON file plus a PNG in --out:

classifier  the real all-MiniLM-L6-v2 fine-tuned on the VADER reviews (a run dir of
            `bench/finetune_real.py --work DIR`, i.e. DIR/run, with its data in DIR/data):
            1. `lmforge.compress.compress`: structured pruning (--ffn-fraction, --head-fraction),
               distillation from the unpruned model, int8 quantization; the pipeline's report;
            2. a paired speed check: the original and the final model timed alternately in one
               process (batch 32, --threads threads, test sentences), the ratio of medians;
            3. accuracy vs sparsity without retraining: magnitude pruning (global) vs structured
               pruning (FFN neurons + heads at the same fraction), sparsity = share of the block
               weights removed.
lm          a small causal LM (`lmforge pretrain` dir): held-out perplexity vs sparsity 0-70%,
            magnitude (block weights zeroed) and structured (FFN neurons + heads removed), each
            without retraining and after a short distillation from the unpruned model.
speed       the paired speed check of step 2 alone, for two saved dirs (--run: the original,
            --final: the compressed one), in file order and in length order.
profile     where the inference time of two classifier dirs goes (batch 32, --threads threads):
            embeddings, attention (its q/k/v/o linears separately), FFN, norms, heads, measured
            by module hooks; the share of padding in the batches; which linears are quantized.

Usage:
    python bench/compress_real.py classifier --run runs/ft/run --data runs/ft/data --out runs/c
    python bench/compress_real.py lm --model runs/lm --out runs/c-lm
    python bench/compress_real.py profile --run runs/ft/run --final runs/c/pipeline/quantized \
        --data runs/ft/data --out runs/c-prof
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write(out: Path, name: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(payload)[:2000])


def _plot(path: Path, curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired_speed(a, b, batches, threads: int, rounds: int) -> dict:
    """Time models a and b alternately over the same batches (a then b in even rounds, b then a
    in odd ones); per round the ratio t_a / t_b of two passes run back to back, so a change of
    the machine's load between rounds cancels. Reports the median ratio and its spread."""
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"a": [], "b": []}
    with torch.inference_mode():
        for model in (a, b):
            model(**batches[0])  # warm-up
        for r in range(rounds):
            pair = (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))
            for key, model in pair:
                t0 = time.perf_counter()
                for batch in batches:
                    model(**batch)
                times[key].append(time.perf_counter() - t0)
    n = sum(x["input_ids"].size(0) for x in batches)
    ratios = sorted(ta / tb for ta, tb in zip(times["a"], times["b"], strict=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"examples": n, "threads": threads, "rounds": rounds,
            "original_examples_per_s": n / med["a"], "final_examples_per_s": n / med["b"],
            "speedup": statistics.median(ratios), "speedup_min": ratios[0],
            "speedup_max": ratios[-1], "ratio_of_medians": med["a"] / med["b"],
            "load_average": _load()}  # fmt: skip


def block_sparsity(model, dense_total: int) -> float:
    from lmforge.compress.prune import prunable_linears

    kept = sum(int((m.weight != 0).sum()) for m in prunable_linears(model).values())
    return 1 - kept / dense_total


def classifier(args) -> None:
    from lmforge.compress.data import StageData
    from lmforge.compress.pipeline import CompressConfig, compress
    from lmforge.compress.prune import magnitude_prune, prunable_linears
    from lmforge.compress.structured import structured_prune
    from lmforge.recipes.finetuned import load_finetuned, read_task_info

    torch.set_num_threads(1)
    data = Path(args.data)
    files = {s: data / f"{s}.jsonl" for s in ("train", "valid", "test")}
    cc = CompressConfig(prune=args.prune, distill=not args.no_distill, ffn_fraction=args.ffn_fraction,
                        head_fraction=args.head_fraction, importance=args.importance,
                        epochs=args.epochs, lr=args.lr, quantize=args.quantize,
                        threads=args.threads, eval_limit=args.eval_limit, speed_batches=2)  # fmt: skip
    if not args.skip_pipeline:
        t0 = time.perf_counter()
        result = compress(args.run, args.out / "pipeline", cc, train=files["train"],
                          valid=files["valid"], test=files["test"])  # fmt: skip
        _write(args.out, "pipeline", {"rows": result.rows, "wall_s": time.perf_counter() - t0,
                                      "config": vars(cc)})  # fmt: skip
        original, final = load_finetuned(args.original or args.run), result.final_dir
        final_model = result.model.eval()
        sd = StageData.build(Path(args.run), original, read_task_info(args.run), None, None,
                             files["test"], cc)  # fmt: skip
        sd.speed_batch, sd.speed_count = 32, args.speed_batches
        speed = {"final_dir": str(final)}
        for order in ("file", "length"):  # the same examples, batched as they come / by length
            sd.speed_sort = order == "length"
            speed[f"order={order}"] = paired_speed(original, final_model, sd.speed_batches(),
                                                   args.threads, args.rounds)  # fmt: skip
        _write(args.out, "speed", speed)
    if not args.fractions:
        return
    # accuracy vs sparsity, no retraining
    base = load_finetuned(args.run)
    sd = StageData.build(Path(args.run), base, read_task_info(args.run), None, None,
                         files["test"], cc)  # fmt: skip
    dense = sum(m.weight.numel() for m in prunable_linears(base).values())
    curves: dict[str, list] = {"magnitude (global)": [], "structured (neurons + heads)": []}
    for f in args.fractions:
        mag = load_finetuned(args.run)
        if f > 0:
            magnitude_prune(mag, f, "global")
        acc = sd.quality(mag)["accuracy"]
        curves["magnitude (global)"].append((block_sparsity(mag, dense), acc))
        st = structured_prune(load_finetuned(args.run), f, f) if f > 0 else load_finetuned(args.run)
        removed = 1 - sum(m.weight.numel() for m in prunable_linears(st).values()) / dense
        curves["structured (neurons + heads)"].append((removed, sd.quality(st)["accuracy"]))
        print(f"fraction {f}: {curves['magnitude (global)'][-1]} "
              f"{curves['structured (neurons + heads)'][-1]} load {_load()}")  # fmt: skip
    _write(args.out, "curve", {"curves": curves, "eval_limit": args.eval_limit, "load": _load()})
    _plot(args.out / "curve.png", curves, "block weights removed", "test accuracy")


def _split_like_pretrain(model_dir: Path) -> tuple[list[str], list[str]]:
    """The embedded corpus split as `lmforge pretrain` split it for this model (its
    train_config.json: valid_fraction, seed): the held-out documents were never trained on."""
    from lmforge.data import default_corpus
    from lmforge.data.sources import split_documents

    tc_path = model_dir / "train_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}
    return split_documents(default_corpus(), tc.get("valid_fraction", 0.05), seed=tc.get("seed", 0))


def lm(args) -> None:
    from lmforge.compress.data import StageData
    from lmforge.compress.pipeline import CompressConfig, train_stage
    from lmforge.compress.prune import magnitude_prune, prunable_linears, remove_masks
    from lmforge.compress.structured import structured_prune
    from lmforge.models import load_model

    torch.set_num_threads(args.threads)
    train_docs, held_docs = _split_like_pretrain(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = args.out / "train.jsonl", args.out / "heldout.jsonl"
    for path, docs in ((train, train_docs), (test, held_docs)):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    cc = CompressConfig(prune="magnitude", scope="layer", max_steps=args.distill_steps,
                        batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                        distill_alpha=args.alpha, distill_temperature=args.temperature,
                        importance="gradient", eval_limit=args.eval_limit)  # fmt: skip
    teacher = load_model(args.model)
    sd = StageData.build(Path(args.model), teacher, None, train, None, test, cc)
    dense = sum(m.weight.numel() for m in prunable_linears(teacher).values())
    base_ppl = sd.quality(teacher)["perplexity"]
    print(f"unpruned: held-out perplexity {base_ppl:.2f} load {_load()}")
    rows = []
    for method in args.methods:
        for s in args.sparsities:
            model = load_model(args.model)
            if s > 0 and method == "magnitude":
                magnitude_prune(model, s)
            elif s > 0:
                grads = dict(batches=sd.importance_batches(8), loss_fn=sd.plain_objective())
                model = structured_prune(model, s, s, importance="gradient", **grads)
            kept = sum(int((m.weight != 0).sum()) for m in prunable_linears(model).values())
            row = {"method": method, "fraction": s, "removed": 1 - kept / dense,
                   "pruned": sd.quality(model)["perplexity"]}  # fmt: skip
            if s > 0 or args.control:
                t0 = time.perf_counter()
                student = train_stage(model, teacher, sd, cc, args.out / f"{method}-{s}", 1.0)
                remove_masks(student)
                row["distilled"] = sd.quality(student)["perplexity"]
                row["distill_s"] = round(time.perf_counter() - t0, 1)
            row["load"] = _load()
            rows.append(row)
            print(json.dumps(row))
    settings = {k: getattr(args, k) for k in ("distill_steps", "lr", "alpha", "temperature",
                                              "batch_size", "seq_len", "eval_limit")}  # fmt: skip
    _write(args.out, "lm_curve", {"model": str(args.model), "unpruned_perplexity": base_ppl,
                                  "held_out_documents": len(held_docs), "settings": settings,
                                  "rows": rows, "load": _load()})  # fmt: skip
    curves = {}
    for r in rows:
        curves.setdefault(f"{r['method']}, pruned", []).append((r["removed"], r["pruned"]))
        if "distilled" in r:
            curves.setdefault(f"{r['method']}, + distilled", []).append(
                (r["removed"], r["distilled"]))  # fmt: skip
    _plot(args.out / "lm_curve.png", curves, "block weights removed", "held-out perplexity")


class _Timer:
    """Forward pre/post hooks that add each module's wall time to its category."""

    def __init__(self, model) -> None:
        self.totals: dict[str, float] = {}
        self.handles = []
        stack = model.encoder if model.cfg.arch == "encoder" else model.decoder
        parts = {"embeddings": [model.embed], "heads": [model.heads]}
        for block in stack.layers:
            attn = block.attn
            parts.setdefault("attention linears (q, k, v, o)", []).extend(
                [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj])  # fmt: skip
            parts.setdefault("attention (all)", []).append(attn)
            parts.setdefault("FFN", []).append(block.mlp)
            parts.setdefault("norms", []).extend([block.attn_norm, block.mlp_norm])
        for name, modules in parts.items():
            for m in modules:
                self.handles.append(m.register_forward_pre_hook(self._start))
                self.handles.append(m.register_forward_hook(self._stop(name)))

    @staticmethod
    def _start(module, _args):
        module._lmforge_t0 = time.perf_counter()

    def _stop(self, name: str):
        def hook(module, _args, _out):
            dt = time.perf_counter() - module._lmforge_t0
            self.totals[name] = self.totals.get(name, 0.0) + dt

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def speed(args) -> None:
    from lmforge.compress.data import StageData
    from lmforge.compress.pipeline import CompressConfig
    from lmforge.recipes.finetuned import load_finetuned, read_task_info

    original, final = load_finetuned(args.run), load_finetuned(args.final)
    out: dict = {"original_dir": str(args.run), "final_dir": str(args.final)}
    for order in ("file", "length"):
        cc = CompressConfig(speed_batches=args.speed_batches, speed_sort=order == "length")
        sd = StageData.build(Path(args.run), original, read_task_info(args.run), None, None,
                             Path(args.data) / "test.jsonl", cc)  # fmt: skip
        out[f"order={order}"] = paired_speed(original, final, sd.speed_batches(), args.threads,
                                             args.rounds)  # fmt: skip
        print(order, json.dumps(out[f"order={order}"]), flush=True)
    _write(args.out, "speed", out)


def profile(args) -> None:
    from lmforge.compress.data import StageData
    from lmforge.compress.pipeline import CompressConfig
    from lmforge.compress.quantize import quantized_modules
    from lmforge.recipes.finetuned import load_finetuned, read_task_info

    torch.set_num_threads(args.threads)
    test = Path(args.data) / "test.jsonl"
    models = {"original": load_finetuned(args.run), "final": load_finetuned(args.final)}
    report: dict = {"threads": args.threads, "load_average_start": _load()}
    for order in ("file", "length"):
        cc = CompressConfig(speed_batches=args.speed_batches, speed_sort=order == "length")
        sd = StageData.build(Path(args.run), models["original"], read_task_info(args.run), None,
                             None, test, cc)  # fmt: skip
        batches = sd.speed_batches()
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["input_ids"].numel() for b in batches)
        entry: dict = {"tokens": real, "padded_tokens": padded, "padding_share": 1 - real / padded}
        for key, model in models.items():
            model.eval()
            with torch.inference_mode():
                model(**batches[0])
                timer = _Timer(model)
                t0 = time.perf_counter()
                for _ in range(args.rounds):
                    for b in batches:
                        model(**b)
                total = time.perf_counter() - t0
                timer.remove()
            shares = {k: round(v / total, 3) for k, v in timer.totals.items()}
            entry[key] = {"seconds_per_batch": total / (args.rounds * len(batches)),
                          "shares": shares}  # fmt: skip
        report[f"order={order}"] = entry
    linears = [n for n, m in models["final"].named_modules() if type(m) is torch.nn.Linear]
    report["final"] = {"dir": str(args.final),
                       "quantized_linears": len(quantized_modules(models["final"])),
                       "float_linears": linears,
                       "quantization": getattr(models["final"], "quantization", None)}  # fmt: skip
    report["load_average_end"] = _load()
    _write(args.out, "profile", report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("classifier")
    c.add_argument("--run", type=Path, required=True)
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--original", type=Path, default=None, help="speed baseline (default --run)")
    c.add_argument("--prune", default="structured")
    c.add_argument("--no-distill", action="store_true")
    c.add_argument("--ffn-fraction", type=float, default=0.5)
    c.add_argument("--head-fraction", type=float, default=0.25)
    c.add_argument("--importance", default="magnitude")
    c.add_argument("--epochs", type=float, default=1.0)
    c.add_argument("--lr", type=float, default=5e-5)
    c.add_argument("--quantize", default="int8")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--eval-limit", type=int, default=None)
    c.add_argument("--speed-batches", type=int, default=4)
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument("--skip-pipeline", action="store_true")
    c.add_argument("--fractions", type=float, nargs="*", default=[0.0, 0.2, 0.4, 0.6])
    m = sub.add_parser("lm")
    m.add_argument("--model", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    m.add_argument("--methods", nargs="+", default=["magnitude", "structured"])
    m.add_argument("--distill-steps", type=int, default=60)
    m.add_argument("--lr", type=float, default=1e-4)
    m.add_argument("--alpha", type=float, default=0.5, help="weight of the KL term")
    m.add_argument("--temperature", type=float, default=2.0)
    m.add_argument("--batch-size", type=int, default=16)
    m.add_argument("--seq-len", type=int, default=64)
    m.add_argument("--eval-limit", type=int, default=None, help="held-out windows scored")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--control", action="store_true", help="also distil the unpruned model")
    for name in ("speed", "profile"):
        f = sub.add_parser(name)
        f.add_argument("--run", type=Path, required=True, help="the original fine-tuned dir")
        f.add_argument("--final", type=Path, required=True, help="the compressed dir")
        f.add_argument("--data", type=Path, required=True)
        f.add_argument("--out", type=Path, required=True)
        f.add_argument("--threads", type=int, default=2)
        f.add_argument("--speed-batches", type=int, default=4)
        f.add_argument("--rounds", type=int, default=5 if name == "speed" else 3)
    args = p.parse_args()
    {"classifier": classifier, "lm": lm, "speed": speed, "profile": profile}[args.what](args)


if __name__ == "__main__":
    main()
