"""The web playground at `/`: a chat page over the server's own streaming API.

    GET /                        the page (plain HTML + JS + CSS from the package, no CDN)
    GET /playground/{file}       its script and style sheet
    GET /playground/info         the served model's id and context, and whether a key is needed
    GET /playground/report       the served run's report card (report.html of the model dir,
                                 else built from the dir when it is a run dir)

The page and its assets carry no data and need no API key (`PUBLIC_PATHS`); the report card
and every /v1 call do: the page asks for the key and sends it as `Authorization: Bearer`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from lmforge.errors import LmforgeError
from lmforge.serve.errors import ApiError

_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
PUBLIC_PATHS = frozenset({"/", "/playground/info", *(f"/playground/{name}" for name in _ASSETS)})


def _asset(name: str) -> str:
    return resources.files("lmforge.serve").joinpath("static", name).read_text(encoding="utf-8")


def report_card(model_dir: Path) -> str | None:
    """The report card of the run behind `model_dir`: its report.html, else one built from the
    dir's metrics; None when the dir holds no run."""
    from lmforge.evaluate.card import CARD_FILE, build_card

    candidates = [model_dir]
    if model_dir.name == "merged":  # a LoRA run's merged model sits in <run>/merged
        candidates.append(model_dir.parent)
    for candidate in candidates:
        path = candidate / CARD_FILE
        if path.is_file():
            return path.read_text(encoding="utf-8")
    try:
        return build_card(model_dir)
    except LmforgeError:
        return None


def mount_playground(app: FastAPI, model_dir: str | Path, needs_key: bool) -> None:
    """Add the playground routes to the server app of `model_dir` (`create_app`'s, whose
    `state.served` names the model); `needs_key` tells the page to ask for the API key."""
    model_dir = Path(model_dir)
    served = app.state.served

    @app.get("/playground/info", include_in_schema=False)
    async def info() -> dict[str, Any]:
        return {"model": served.name, "context_length": served.context, "needs_key": needs_key}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("playground.html"))

    @app.get("/playground/report", include_in_schema=False)
    async def report() -> HTMLResponse:
        card = report_card(model_dir)
        if card is None:
            raise ApiError(
                f"{model_dir.name} has no report card; run `lmforge report RUN_DIR` on the "
                "run that trained it.",
                status=404,
                code="not_found",
            )
        return HTMLResponse(card)

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _ASSETS:
            raise ApiError(f"the playground has no file '{name}'.", status=404, code="not_found")
        return Response(_asset(name), media_type=_ASSETS[name])
