"""Training checkpoints: model, optimizer and loop state, written so that a crash never leaves
a half-written checkpoint in place.

Layout of `<run>/checkpoints/last/`:
    config.json, model.safetensors   the model (same format as any model dir)
    optimizer.safetensors            AdamW moments, one tensor per (parameter, slot)
    trainer_state.json               step, best eval loss, optimizer hyper-parameters, RNG
    manifest.json                    SHA-256 of every file above, written last

The directory is assembled under a temporary name, fsynced, then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import CheckpointError
from lmforge.models.io import load_state, save_model
from lmforge.utils.fs import atomic_write_text, fsync_dir, sha256_file

MANIFEST = "manifest.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into safetensors-ready tensors and JSON metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, slots in sd["state"].items():
        for slot, value in slots.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{slot}"] = t.detach().contiguous().cpu()
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def write_manifest(path: Path) -> None:
    files = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {name: sha256_file(path / name) for name in files}
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2))


def verify(path: Path) -> bool:
    """True when every file in the manifest exists with its recorded SHA-256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((path / n).is_file() and sha256_file(path / n) == h for n, h in manifest.items())


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a complete checkpoint to `path`, replacing any previous one atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        save_model(model, tmp)
        tensors, meta = optimizer_tensors(optimizer)
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_text(tmp / "trainer_state.json", json.dumps({**state, **meta}, indent=2))
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        write_manifest(tmp)
        fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".old-{path.name}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def recover(path: str | Path) -> Path | None:
    """The usable checkpoint at `path`: itself if complete, else the previous one kept during a
    replace (with a warning); stale temporary dirs are removed. None when there is none."""
    path = Path(path)
    parent = path.parent
    if parent.is_dir():
        for stale in parent.glob(f".tmp-{path.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    old = path.with_name(f".old-{path.name}")
    if path.is_dir() and verify(path):
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return path
    if old.is_dir() and verify(old):
        warnings.warn(f"checkpoint {path} is incomplete; using the previous complete one.", stacklevel=2)
        if path.exists():
            shutil.rmtree(path)
        os.replace(old, path)
        return path
    if path.exists():
        raise CheckpointError(
            f"checkpoint {path} is damaged (its files do not match manifest.json) and no earlier "
            "one is left; delete it to start over."
        )
    return None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load model, optimizer and RNG state saved by `save_checkpoint`; returns the loop state."""
    path = Path(path)
    load_state(model, path / "model.safetensors")
    state = json.loads((path / "trainer_state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(optimizer_from_tensors(tensors, state))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_rng"])
    if "cuda_rng" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda_rng"])
    return state
