"""An OpenAI-compatible HTTP server over `lmforge.generate`, with continuous batching.

Example:
    >>> from lmforge.serve import serve
    >>> serve("runs/quickstart", port=8000, api_key="secret")   # lmforge serve runs/quickstart

    $ curl http://127.0.0.1:8000/v1/completions -H "Authorization: Bearer secret" \\
        -H "Content-Type: application/json" -d '{"model": "quickstart", "prompt": "Once"}'
"""

from lmforge.serve.app import create_app
from lmforge.serve.engine import Engine
from lmforge.serve.errors import ApiError
from lmforge.serve.protocol import Limits, Served
from lmforge.serve.server import BackgroundServer, build_app, free_port, serve

__all__ = [
    "ApiError",
    "BackgroundServer",
    "Engine",
    "Limits",
    "Served",
    "build_app",
    "create_app",
    "free_port",
    "serve",
]
