"""Quantize a checkpoint directory: load it, swap in quantized linears, write a new directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.compress.quantize import Method, check_method, quantize_model
from lmforge.errors import ConfigError
from lmforge.interop.hf import copy_tokenizer_files
from lmforge.models import load_model, save_model
from lmforge.models.io import WEIGHTS


@dataclass
class QuantizeResult:
    """What `quantize_checkpoint` wrote: the dir, the swapped modules and the weight file sizes."""

    out_dir: Path
    method: str
    modules: list[str]
    bytes_before: int
    bytes_after: int


def quantize_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    method: Method = "int8",
    group_size: int = 128,
    skip: list[str] | None = None,
) -> QuantizeResult:
    """Write a quantized copy of `model_dir` (weights, config with the record, tokenizer) to
    `out_dir`; see `lmforge.compress.quantize` for the methods and their formulas.

    Raises `ConfigError` when `out_dir` is `model_dir` (the original is never overwritten), the
    model is already quantized, or the method or group size is unknown.
    """
    src, dst = Path(model_dir), Path(out_dir)
    check_method(method, group_size)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ConfigError(
            f"--out {dst} is the model dir itself; pass a new directory so the original stays."
        )
    model = load_model(src)
    if model.cfg.quantization:
        raise ConfigError(
            f"{src} is already quantized ({model.cfg.quantization['method']}); quantize the "
            "original floating-point model instead."
        )
    quantize_model(model, method, group_size, skip or ())
    save_model(model, dst)
    copy_tokenizer_files(src, dst)
    return QuantizeResult(
        out_dir=dst,
        method=method,
        modules=list(model.quantization["modules"]),
        bytes_before=(src / WEIGHTS).stat().st_size,
        bytes_after=(dst / WEIGHTS).stat().st_size,
    )
