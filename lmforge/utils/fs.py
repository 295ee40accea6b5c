"""Atomic file writes (write to a temporary file in the same directory, fsync, rename) and the
shared check of every verb's `--out` folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lmforge.errors import ConfigError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes owner-only files; saved artefacts are shared
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------- output folders

#: The marker an lmforge verb leaves in its `--out` folder: {"kind": ..., "format": 1}.
RUN_MARKER = "lmforge_run.json"
#: Files that show a folder is a run written by an older lmforge (before the marker existed).
_LEGACY_RUN_FILES = ("train_config.json", "metrics.jsonl")


def out_dir_kind(path: str | Path) -> str | None:
    """The kind of lmforge output in `path` ("pretrain", "finetune", ...), "run" for a training
    run of an older lmforge that left no marker, or None when it is not an lmforge output."""
    path = Path(path)
    try:
        marker = json.loads((path / RUN_MARKER).read_text(encoding="utf-8"))
        return str(marker["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if all((path / name).is_file() for name in _LEGACY_RUN_FILES):
        return "run"
    return None


def _same_place(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def prepare_out_dir(
    out: str | Path,
    kind: str,
    *,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    resume: bool = False,
    is_ours: Callable[[Path], bool] | None = None,
    write: bool | None = None,
) -> Path:
    """Check that a verb of `kind` may write into `out`, then create it and mark it as ours.

    Rules (each broken rule is one `LmforgeError` sentence):

    - `out` is never one of `inputs` (the model, tokenizer or data folder being read): writing
      there would replace the input while it is read.
    - `out` may be new, empty, or an lmforge output of the same `kind` (its `lmforge_run.json`
      says so, or `is_ours(out)` is true). A training run that already has checkpoints needs
      `resume` (continue it) or `overwrite` (start over in the same folder).
    - Anything else (a folder with other files, or another verb's output) needs `overwrite`.
    - `resume` needs an output of the same kind to continue.

    Args:
        out: the folder to write.
        kind: the verb's kind of output: "pretrain", "finetune", "convert", "token-shards", ...
        inputs: paths the verb reads (None entries are ignored).
        overwrite: write into a non-empty folder that is not an output of this kind.
        resume: the verb continues the output already there.
        is_ours: recognizes an output of this kind that has no marker (written by older code).
        write: create `out`, write the marker and remove replaced checkpoints; None means "on
            rank 0 only" (torchrun's RANK), as every file of a run is written by rank 0.
    """
    out = Path(out)
    if write is None:
        write = os.environ.get("RANK", "0") == "0"
    for source in inputs:
        if source is not None and _same_place(out, Path(source)):
            raise ConfigError(
                f"--out {out} is also an input of this command; it would be overwritten while "
                "it is read, so pass a new folder as --out."
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder.")
    entries = [p for p in out.iterdir() if not _is_temp(p.name)] if out.is_dir() else []
    found = out_dir_kind(out) if entries else None
    ours = bool(entries) and (found in (kind, "run") or (is_ours is not None and is_ours(out)))
    if resume and not ours:
        what = "is empty" if not entries else f"is not an lmforge {kind} output"
        raise ConfigError(
            f"--resume needs an earlier {kind} run in {out}, but it {what}; drop --resume to "
            "start a new run or pass the folder of the run to continue."
        )
    if entries and not ours and not overwrite:
        what = f"an lmforge {found} output" if found else "a folder with other files"
        raise ConfigError(
            f"--out {out} is {what}, not an lmforge {kind} output; pass a new or empty folder, "
            "or add --overwrite to write into it anyway."
        )
    if ours and not resume and not overwrite and _has_checkpoints(out):
        raise ConfigError(
            f"--out {out} holds an earlier {kind} run with checkpoints; add --resume to continue "
            "it, --overwrite to start over in it, or pass a new folder."
        )
    if write and ours and overwrite and not resume:
        _remove_checkpoints(out)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_MARKER, json.dumps({"kind": kind, "format": 1}) + "\n")
    return out


def _is_temp(name: str) -> bool:
    """Hidden temporary files an interrupted atomic write leaves (".NAME.XXXX.tmp")."""
    return name.startswith(".") and name.endswith(".tmp")


def _has_checkpoints(out: Path) -> bool:
    ckpt = out / "checkpoints"
    return ckpt.is_dir() and any(p.name.startswith("step-") for p in ckpt.iterdir())


def _remove_checkpoints(out: Path) -> None:
    """Start over: remove the earlier run's checkpoints (folders with a checkpoint manifest)."""
    ckpt = out / "checkpoints"
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if p.is_dir() and p.name.startswith("step-") and (p / "manifest.json").is_file():
                shutil.rmtree(p)


def clean_orphan_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders that a killed atomic write left in `folder`
    (".NAME.XXXX.tmp" files and ".tmp-*" / ".old-*" folders); returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.is_file() and _is_temp(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
        elif p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
