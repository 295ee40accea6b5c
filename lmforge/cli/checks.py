"""What every verb shares: an unexpected failure is one line, never a traceback (unless
LMFORGE_TRACEBACK=1 asks for it). Non-finite numbers are refused where each value is checked
(GenerationConfig, ModelConfig, TrainConfig, the serve options), as the CLI tests show."""

from __future__ import annotations

import errno
import os
import sys
import traceback

import typer

from lmforge.errors import first_line


def disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk, or a library's error quoting one (safetensors says "No space
    left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc)


def unexpected(exc: BaseException) -> None:
    """Report a failure that is not a user error in one line and exit 1 (a full disk is said
    as such: it is the machine, not lmforge)."""
    if os.environ.get("LMFORGE_TRACEBACK") == "1":
        traceback.print_exception(exc)
    if disk_full(exc):
        typer.echo(
            "error: the disk is full (No space left on device); free some space or write "
            "--out to another disk, then run the command again (files written before are "
            "intact: every write goes to a temporary file first).",
            err=True,
        )
        sys.exit(1)
    detail = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
    typer.echo(
        f"error: lmforge failed unexpectedly ({detail[:300]}); rerun with LMFORGE_TRACEBACK=1 "
        "to see where, and report it.",
        err=True,
    )
    sys.exit(1)
