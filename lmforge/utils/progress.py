"""Progress bars (tqdm, on stderr, with an ETA) for work that can take more than a few seconds."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bar(
    items: Iterable[T], total: int | None, desc: str, unit: str = "batch", enabled: bool = True
) -> Iterator[T]:
    """`items` wrapped in a tqdm bar (elapsed, rate, ETA) that clears itself when done."""
    return iter(
        tqdm(
            items,
            total=total,
            desc=desc,
            unit=unit,
            disable=not enabled,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        )  # fmt: skip
    )
