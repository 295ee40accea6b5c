"""Shared pieces of the benchmark scripts: device set-up, timing, tables, the machine, and a
gpt-style lmforge model paired with a Hugging Face `GPT2LMHeadModel` holding the same weights.

Timing rules every script follows: warm up first (allocator, kernel caches, compilation), then
time each contender in turn within one process, alternating the order between repeats so that
drift in machine load hits both sides alike; report medians and ratios, never a single run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.interop import config_to_hf, state_to_hf
from lmforge.models import Transformer
from lmforge.models.io import state_dict_for_saving

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


#: A Llama of SmolLM2-135M's shape (random weights are fine for speed): the real-scale decode
#: benchmarks' model.
SMOLLM2_135M = dict(
    arch="decoder", vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, d_model=576, d_ff=1536,
    max_seq_len=2048, pos="rope", rope_theta=1e5, norm="rmsnorm", norm_eps=1e-5, mlp="glu",
    activation="silu", bias=False, tie_embeddings=True, heads=("lm",),
)  # fmt: skip


# ------------------------------------------------------------------ device and timing
def setup(device: str, threads: int | None = None, seed: int = 0) -> torch.device:
    """Resolve the device, pin the CPU thread count (None = torch's default) and seed."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second a sum over a `mib` MiB float32 buffer reads (median of repeats): the
    memory bandwidth that bounds a decode step, measured in the same run as the step."""
    buf = torch.ones(mib * 2**20 // 4)
    buf.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / median(times)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a host clock reads the real end of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(
    contenders: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = print,
) -> dict[str, list[float]]:
    """Time each contender `repeats` times, interleaved: A B, B A, A B, ...

    Every contender is first called `warmup` times (untimed). Returns seconds per call.
    """
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            timed(contenders[name], device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(contenders[name], device))
            if log is not None:
                log(f"  repeat {r + 1}/{repeats} {name}: {times[name][-1]:.3f} s")
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """min-max of a list of rates, for the table: '1234-1301'."""
    return f"{min(xs):,.0f}-{max(xs):,.0f}"


def ratio_columns(rates: dict[str, list[float]], base: str) -> dict[str, list[float]]:
    """Three ratios of each contender's rates to `base`'s:

    - of the medians;
    - paired: the median over repeats of (rate / base's rate in the same repeat), the two runs
      being adjacent in time and so under similar machine load;
    - of the best runs (max / max), the least disturbed run of each.
    """
    ref = rates[base]
    return {
        name: [
            median(r) / median(ref),
            median([a / b for a, b in zip(r, ref, strict=True)]),
            max(r) / max(ref),
        ]
        for name, r in rates.items()
    }


# ------------------------------------------------------------------ reporting
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats get thousands separators and one decimal."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    """The commit measured, with '+dirty' when the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "lmforge"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty (lmforge/ differs from HEAD)" if dirty else "")


def machine_info(device: torch.device) -> dict[str, str]:
    """What the figures were measured on."""
    import transformers

    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "lmforge commit": git_revision(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "load average (1 min) at start": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path, args, device: torch.device, results) -> None:
    """The run's arguments, machine and results as one JSON file (for --json)."""
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_info(device),
        "results": results,
    }
    path.write_text(json.dumps(record, indent=2))


def print_machine(device: torch.device) -> None:
    for k, v in machine_info(device).items():
        print(f"- {k}: {v}")


# ------------------------------------------------------------------ the model pair
def gpt_pair(
    preset: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    **overrides: object,
) -> tuple[Transformer, nn.Module]:
    """An lmforge model of `preset` and a `GPT2LMHeadModel` of the same shape and weights.

    The lmforge model is initialised as lmforge does; its tensors go through the production
    exporter (`state_to_hf`) into the Hugging Face model, so both start from identical
    parameters (the LM head tied to the token embedding in both).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = ModelConfig.from_preset(preset, **overrides)
    torch.manual_seed(seed)
    ours = Transformer(cfg)
    hf_cfg = GPT2Config.from_dict(config_to_hf(cfg))
    hf = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation=attn_implementation)
    _transfer(ours, hf, hf.transformer.wte)
    return ours.to(device=device, dtype=dtype), hf.to(device=device, dtype=dtype)


def llama_pair(
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Transformer, nn.Module]:
    """An lmforge Llama of SmolLM2-135M's shape (`SMOLLM2_135M`, random weights) and a
    `LlamaForCausalLM` holding the same weights (through the production exporter)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = ModelConfig.from_dict(SMOLLM2_135M)
    torch.manual_seed(seed)
    ours = Transformer(cfg)
    hf_cfg = LlamaConfig.from_dict(config_to_hf(cfg))
    hf = LlamaForCausalLM._from_config(hf_cfg, attn_implementation=attn_implementation)
    _transfer(ours, hf, hf.model.embed_tokens)
    return ours.to(device=device, dtype=dtype), hf.to(device=device, dtype=dtype)


def _transfer(ours: Transformer, hf: nn.Module, hf_embedding: nn.Module) -> None:
    """Copy lmforge's weights into the Hugging Face model; its LM head must stay tied."""
    result = hf.load_state_dict(state_to_hf(ours.cfg, state_dict_for_saving(ours)), strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]  # tied to the embedding
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weight transfer failed: {missing} {result.unexpected_keys}")
    if hf.lm_head.weight.data_ptr() != hf_embedding.weight.data_ptr():
        raise RuntimeError("the Hugging Face LM head is not tied to the token embedding")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
