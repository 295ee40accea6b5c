"""Constants and small helpers shared by the server tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

API_KEY = "test-key"
CONTEXT = 512
MAX_BATCH = 8
MODEL = "tiny-chat"


def http(
    url: str, body: bytes | None = None, key: str | None = API_KEY, method: str | None = None
) -> tuple[int, dict]:
    """A raw request (no OpenAI client): (status, decoded JSON body)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(base_url: str) -> dict:
    return http(base_url + "/health", key=None)[1]
