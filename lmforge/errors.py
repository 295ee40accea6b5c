"""User-facing errors.

Every error a user can cause and fix is a :class:`LmforgeError`. Its message is one sentence that
says what is wrong and how to fix it; the CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LmforgeError(Exception):
    """An error caused by the user's input, with a message the user can act on."""


class ConfigError(LmforgeError):
    """A configuration value, preset name or override is invalid."""


class DataError(LmforgeError):
    """A data path is missing, empty, unreadable or in the wrong format."""


class CheckpointError(LmforgeError):
    """A directory is not a usable lmforge checkpoint."""


class GenerationError(LmforgeError):
    """A generation request cannot be served as asked (for example, a prompt that is too long)."""


class TokenizerError(LmforgeError):
    """A tokenizer cannot be trained or loaded as asked."""


class AdapterError(LmforgeError):
    """A parameter-efficient adapter (LoRA, prompt or prefix tuning) cannot be applied, saved or
    loaded as asked."""


class RunInterrupted(LmforgeError):
    """A training run stopped on SIGTERM or SIGINT after saving a checkpoint; `--resume` goes on.

    The CLI exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class ServeError(LmforgeError):
    """A request to the HTTP server, or the server's own setup, is not valid."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty),
    to quote inside a one-sentence error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
