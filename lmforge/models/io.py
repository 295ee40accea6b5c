"""Save and load a model directory: `config.json` + `model.safetensors`. Nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.models.quant import prepare_quantized
from lmforge.models.transformer import Transformer
from lmforge.utils.fs import atomic_path, atomic_write_text

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def state_dict_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors stores each storage once)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_model(model: Transformer, out_dir: str | Path) -> Path:
    """Write config.json and model.safetensors into out_dir (each file atomically).

    A model quantized by `lmforge.compress.quantize_model` is written as its integer tensors and
    scales, with the quantization record in config.json's `quantization` key.
    """
    cfg = model.cfg
    record = getattr(model, "quantization", None)
    if record and cfg.quantization != record:
        cfg = cfg.replace(quantization=record)
    return save_weights(cfg, state_dict_for_saving(model), out_dir)


def save_weights(cfg: ModelConfig, tensors: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Write a model dir from a config and its (untied, full) tensors, each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS) as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n")
    return out_dir


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load_state(model: Transformer, path: str | Path, strict: bool = True) -> None:
    """Load weights from a safetensors file into `model`; tied weights may be absent."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"cannot read weights {path} ({e}); the file is damaged or not safetensors."
        ) from None
    load_state_dict(model, state, path, strict)


def load_state_dict(
    model: Transformer, state: dict[str, torch.Tensor], source: str | Path, strict: bool = True
) -> None:
    """Copy `state` into `model`: shapes must match, tied weights may be absent.

    Split out of `load_state` so converters (`lmforge.interop`) load a mapped state dict with
    the same checks; `source` names where the weights came from in error messages.
    """
    path = source
    expected = model.state_dict()
    for name, t in state.items():
        check_finite(name, t, path)
        if name in expected and expected[name].shape != t.shape:
            raise CheckpointError(
                f"tensor '{name}' has shape {tuple(t.shape)} in {path} but the model expects "
                f"{tuple(expected[name].shape)}; the config does not match the weights."
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {
        n for n, p in model.named_parameters()
    }
    missing = [m for m in missing if m not in tied]
    if strict and (missing or unexpected):
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"weights in {path} do not fit the model: {what}.")


def check_finite(name: str, tensor: torch.Tensor, source: str | Path) -> None:
    """Refuse a floating tensor holding NaN or Inf, naming it (checked in slices of 16M
    values, so the check needs little memory beside the tensor)."""
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return
    for part in tensor.detach().reshape(-1).split(1 << 24):
        if not bool(torch.isfinite(part).all()):
            raise CheckpointError(
                f"tensor '{name}' in {source} holds NaN or Inf values; the weights are damaged "
                "(or training diverged), use an earlier checkpoint."
            )


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header, reading no tensor data (the
    library checks every offset against the file's size)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"cannot read weights {path} ({e}); the file is damaged or not safetensors."
        ) from None


def least_values(cfg: ModelConfig) -> int:
    """A lower bound on the weights a config implies: token embeddings + per block the query
    and output projections and two feed-forward matrices (2 d h + 2 d f), with each block's
    own sizes (`layer_n_head`, `layer_d_ff` of a pruned model)."""
    d, hd = cfg.d_model, cfg.head_dim
    blocks = sum(2 * d * (h * hd + f) for h, f in zip(cfg.layer_heads, cfg.layer_ffn, strict=True))
    blocks += (cfg.n_decoder_layer or 0) * 2 * d * (cfg.n_head * hd + cfg.d_ff)
    return cfg.vocab_size * d + blocks


def check_header(cfg: ModelConfig, path: str | Path) -> None:
    """Compare the shapes a config implies with a weights file's header before building the
    model: a config claiming more (or other) tensors than the file holds fails here, without
    allocating anything."""
    size = Path(path).stat().st_size
    # every value takes at least a byte, half a byte in an int4 checkpoint
    per_value = 0.5 if (cfg.quantization or {}).get("method") == "int4" else 1.0
    if least_values(cfg) * per_value > size:
        raise CheckpointError(
            f"the config describes at least {least_values(cfg):,} weights but {path} holds only "
            f"{size:,} bytes; the config does not match the weights."
        )
    have = header_shapes(path)
    with torch.device("meta"):
        skeleton = build_model(cfg)
        if cfg.quantization:
            _quantized(skeleton, cfg)
    tied = {n for n, _ in skeleton.named_parameters(remove_duplicate=False)} - {
        n for n, _ in skeleton.named_parameters()
    }
    for name, t in skeleton.state_dict().items():
        if name in have and have[name] != tuple(t.shape):
            raise CheckpointError(
                f"tensor '{name}' has shape {have[name]} in {path} but the config implies "
                f"{tuple(t.shape)}; the config does not match the weights."
            )
        if name not in have and name not in tied:
            raise CheckpointError(
                f"{path} has no tensor '{name}', which the config needs; the config does not "
                "match the weights."
            )


def _quantized(model: Transformer, cfg: ModelConfig) -> None:
    # a quantized checkpoint needs its quantized linears swapped in before its integer
    # tensors can load
    prepare_quantized(model, cfg.quantization)


def build_model(cfg: ModelConfig) -> Transformer:
    """The model a config describes: the `Transformer`, or a `FusionModel` (text core + image
    encoder) when the config has images."""
    if cfg.image_size is not None:
        from lmforge.models.fusion import FusionModel

        return FusionModel(cfg)
    return Transformer(cfg)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from `config.json` and load `model.safetensors`.

    A quantized checkpoint (config.json has a `quantization` record) gets its quantized linears
    back before the weights load, so every verb runs it as saved.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model dir {model_dir} does not exist; pass a checkpoint directory.")
    if not is_model_dir(model_dir):
        raise CheckpointError(
            f"{model_dir} is not an lmforge checkpoint (it needs {CONFIG} and {WEIGHTS}); "
            "pass the --out directory of `lmforge pretrain` or a converted model."
        )
    cfg = ModelConfig.from_dir(model_dir)
    check_header(cfg, model_dir / WEIGHTS)
    model = build_model(cfg)
    if cfg.quantization:
        _quantized(model, cfg)
    load_state(model, model_dir / WEIGHTS)
    return model.to(device).eval()
