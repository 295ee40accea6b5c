"""Data shared by the prompting tests: a small review-like corpus with labels."""

from __future__ import annotations

import json
from pathlib import Path

REVIEWS = [
    ("a great film with a wonderful cast", "positive"),
    ("the plot was good and the music great", "positive"),
    ("i loved every minute of it", "positive"),
    ("a wonderful and moving story", "positive"),
    ("the acting was terrible and the plot bad", "negative"),
    ("a boring film with awful dialogue", "negative"),
    ("i hated the ending it was bad", "negative"),
    ("terrible pacing and a dull story", "negative"),
]
EXTRA = "it was great . it was terrible . it was good . it was bad . review : overall"


def corpus() -> list[str]:
    return [text for text, _ in REVIEWS] * 20 + [EXTRA] * 20


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
