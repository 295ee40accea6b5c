"""Checks every verb shares: option values parsed by click are refused when not finite, and an
unexpected failure is one line, never a traceback (unless LMFORGE_TRACEBACK=1 asks for it)."""

from __future__ import annotations

import math
import os
import sys
import traceback
from typing import Any

import click


def refuse_non_finite_floats() -> None:
    """Make every float option (click's FLOAT and FloatRange) refuse nan and inf: a NaN compares
    false with every bound, so a range alone lets it through. Idempotent."""
    base = click.types.FloatParamType
    if getattr(base.convert, "_lmforge_finite", False):
        return
    convert = base.convert

    def finite_convert(self: Any, value: Any, param: Any, ctx: Any) -> Any:
        out = convert(self, value, param, ctx)
        if isinstance(out, float) and not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return out

    finite_convert._lmforge_finite = True  # type: ignore[attr-defined]
    base.convert = finite_convert  # type: ignore[method-assign]


def unexpected(exc: BaseException) -> None:
    """Report a failure that is not a user error in one line and exit 1."""
    if os.environ.get("LMFORGE_TRACEBACK") == "1":
        traceback.print_exception(exc)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    click.echo(
        f"error: lmforge failed unexpectedly ({detail[:300]}); rerun with LMFORGE_TRACEBACK=1 "
        "to see where, and report it.",
        err=True,
    )
    sys.exit(1)
