"""Errors as OpenAI's API reports them: an HTTP status and the error envelope

{"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": "..."}}
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.errors import ServeError


class ApiError(ServeError):
    """A request the server refuses, with the HTTP status and the envelope's fields.

    Args:
        message: one sentence saying what is wrong and how to fix it.
        status: the HTTP status (400 bad request, 401 auth, 404 unknown, 413 too large, 500).
        param: the request field at fault, if one is.
        code: a machine-readable reason such as "context_length_exceeded".
        type: the OpenAI error type ("invalid_request_error" for a client's mistake).
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = (
            message,
            status,
            param,
            code,
            type,
        )

    def envelope(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients expect for an error."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """{"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def check_range(
    name: str, value: float | int | None, low: float | None = None, high: float | None = None
) -> None:
    """400 when `value` (if given) is not finite or lies outside [low, high], with OpenAI's
    codes."""
    if value is None:
        return
    kind = "integer" if isinstance(value, int) else "number"
    if not math.isfinite(value):
        raise ApiError(
            f"'{name}' must be a finite number, got {value}.", param=name, code="invalid_value"
        )
    if low is not None and value < low:
        raise ApiError(
            f"'{name}' must be at least {low}, got {value}.",
            param=name,
            code=f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise ApiError(
            f"'{name}' must be at most {high}, got {value}.",
            param=name,
            code=f"{kind}_above_max_value",
        )
