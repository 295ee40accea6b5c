"""Shared data of the knowledge tests: fact sentences and a toy embedding."""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F

FACTS = [
    "The capital of France is Paris. The currency of France is the Euro.",
    "The capital of Japan is Tokyo. The currency of Japan is the Yen.",
    "The capital of Peru is Lima. The currency of Peru is the Sol.",
]


def letters(texts: Sequence[str]) -> torch.Tensor:
    """A toy embedding: unit vectors of letter counts (anagrams embed alike: Frnace = France)."""
    rows = [[t.lower().count(c) for c in string.ascii_lowercase] for t in texts]
    return F.normalize(torch.tensor(rows, dtype=torch.float32) + 1e-6, dim=-1)
