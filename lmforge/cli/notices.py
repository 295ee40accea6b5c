"""Warnings of one kind shown as one plain line on stderr ("note: ...") instead of Python's
file:line warning format."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import typer


@contextlib.contextmanager
def warning_lines(category: type[Warning], prefix: str = "note") -> Iterator[None]:
    """Inside the block, each `category` warning prints as '<prefix>: <message>' on stderr."""
    original = warnings.showwarning

    def show(message, cls, *args, **kwargs) -> None:
        if issubclass(cls, category):
            typer.echo(f"{prefix}: {message}", err=True)
        else:
            original(message, cls, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield
