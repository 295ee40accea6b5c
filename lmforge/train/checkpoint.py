"""Training checkpoints: model, optimizer and loop state, written so that a crash never leaves
a half-written checkpoint in place.

Layout of `<run>/checkpoints/step-00001000/` (the newest `keep_last` are kept):
    config.json, model.safetensors   the model (same format as any model dir)
    optimizer.safetensors            AdamW moments, one tensor per (parameter name, slot)
    rng.safetensors                  the random generator state of every rank
    trainer_state.json               step, best eval loss, optimizer parameter groups
    manifest.json                    SHA-256 of every file above, written last

The directory is assembled under a temporary name, fsynced, then renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import CheckpointError
from lmforge.utils.fs import atomic_write_text, fsync_dir, sha256_file

MANIFEST = "manifest.json"
_STEP = re.compile(r"step-\d{8,}")
#: Files every checkpoint has (its manifest must list them, and every other file).
REQUIRED = frozenset(
    {
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "trainer_state.json",
    }
)


def tied_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier name (stored once)."""
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def optimizer_to_files(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a name-keyed optimizer state into tensors ("<param>::<slot>") and JSON groups."""
    tensors = {}
    for name, slots in optim_state["state"].items():
        for slot, value in slots.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{name}::{slot}"] = t.detach().contiguous().cpu()
    return tensors, {"param_groups": optim_state["param_groups"]}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, slot = key.split("::", 1)
        state.setdefault(name, {})[slot] = t
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def write_manifest(path: Path) -> None:
    files = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {name: sha256_file(path / name) for name in files}
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2))


def verify(path: Path) -> bool:
    """True when the manifest lists exactly the checkpoint's files (an entry for every file,
    the four required ones among them) and each has its recorded SHA-256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(manifest, dict):
        return False
    files = {p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST}
    if files != set(manifest) or not REQUIRED <= files:
        return False
    return all(sha256_file(path / n) == h for n, h in manifest.items())


def save_checkpoint(
    path: str | Path,
    cfg,
    model_state: dict[str, torch.Tensor],
    optim_state: dict,
    state: dict[str, Any],
    rng_states: list[torch.Tensor] | None = None,
    skip: set[str] = frozenset(),
) -> Path:
    """Write a complete checkpoint to `path` (a model dir plus training state), replacing any
    previous one atomically.

    Args:
        path: the checkpoint dir (e.g. run/checkpoints/step-00001000).
        cfg: the ModelConfig (written as config.json).
        model_state: full model tensors by name; names in `skip` (tied copies) are left out.
        optim_state: name-keyed optimizer state ({"state": ..., "param_groups": ...}).
        state: loop state (step, best eval loss, ...) for trainer_state.json.
        rng_states: torch CPU RNG state of every rank.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        weights = {
            k: v.detach().contiguous().cpu() for k, v in model_state.items() if k not in skip
        }
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        tensors, meta = optimizer_to_files(optim_state)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {f"torch_rng.{r}": t for r, t in enumerate(rng_states or [torch.get_rng_state()])}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, **meta}, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        write_manifest(tmp)
        fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".old-{path.name}")  # matches clean_stale's pattern
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


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint dirs under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP.fullmatch(p.name))


def clean_stale(root: str | Path) -> None:
    """Remove temporary dirs left by a save that was killed."""
    root = Path(root)
    if root.is_dir():
        for stale in root.glob(".*-step-*"):
            shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root` (its files match its manifest).

    A newer one that is incomplete or damaged is skipped with a warning, falling back to the
    previous complete one. None when there is no checkpoint at all.

    Raises:
        CheckpointError: there are checkpoints but every one is incomplete or damaged.
    """
    found = list_checkpoints(root)
    for path in reversed(found):
        if verify(path):
            return path
        warnings.warn(
            f"checkpoint {path} is incomplete or damaged; falling back to the previous one.",
            stacklevel=2,
        )
    if found:
        raise CheckpointError(
            f"every checkpoint under {root} ({len(found)}) is incomplete or damaged, so there is "
            "nothing to resume from; drop --resume and add --overwrite to start over."
        )
    return None


def run_id_of(path: str | Path) -> str | None:
    """The id of the run that wrote a checkpoint (None when unreadable or not recorded)."""
    try:
        return json.loads((Path(path) / "trainer_state.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def prune(root: str | Path, keep: int, run_id: str | None = None) -> None:
    """Keep the newest `keep` checkpoints written by run `run_id`; other folders under `root`
    (another run's checkpoints, a user's files) are never touched."""
    ours = [p for p in list_checkpoints(root) if run_id is None or run_id_of(p) == run_id]
    for path in ours[:-keep] if keep > 0 else ours:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class LoadedCheckpoint:
    model_state: dict[str, torch.Tensor]
    optim_state: dict
    state: dict[str, Any]
    rng_states: dict[str, torch.Tensor]

    def rng_for(self, rank: int) -> torch.Tensor | None:
        return self.rng_states.get(f"torch_rng.{rank}")


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read the tensors and state written by `save_checkpoint` (safetensors + JSON only)."""
    path = Path(path)
    try:
        model_state = load_file(str(path / "model.safetensors"))
        state = json.loads((path / "trainer_state.json").read_text())
        optim = optimizer_from_files(load_file(str(path / "optimizer.safetensors")), state)
        rng = load_file(str(path / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({e}); delete it to start over."
        ) from None
    return LoadedCheckpoint(model_state, optim, state, rng)
