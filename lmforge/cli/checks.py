"""What every verb shares: an unexpected failure is one line, never a traceback (unless
LMFORGE_TRACEBACK=1 asks for it). Non-finite numbers are refused where each value is checked
(GenerationConfig, ModelConfig, TrainConfig, the serve options), as the CLI tests show."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from lmforge.errors import first_line


def unexpected(exc: BaseException) -> None:
    """Report a failure that is not a user error in one line and exit 1."""
    if os.environ.get("LMFORGE_TRACEBACK") == "1":
        traceback.print_exception(exc)
    detail = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
    typer.echo(
        f"error: lmforge failed unexpectedly ({detail[:300]}); rerun with LMFORGE_TRACEBACK=1 "
        "to see where, and report it.",
        err=True,
    )
    sys.exit(1)
