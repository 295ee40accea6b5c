"""Stop strings: find them in decoded text, cut text and tokens before them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index in `text` where the earliest stop string begins, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string.

    A stream holds those characters back: the next token may complete the stop string.
    """
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class StopStrings:
    """Checks generated ids for stop strings by decoding only a window at their end."""

    def __init__(self, tokenizer: Decoder, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        # a character may take up to 4 byte-level tokens, so this window holds any stop string
        self.window = 4 * max(len(s) for s in self.stops) + 4

    def hit(self, ids: list[int]) -> bool:
        """True when the decoded tail of `ids` contains a stop string."""
        tail = self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
        return find_stop(tail, self.stops) is not None

    def cut(self, ids: list[int]) -> tuple[list[int], str]:
        """(tokens, text) before the first stop string.

        The text is cut exactly; the tokens are the longest prefix whose text does not run
        into the stop string (a token that straddles it is dropped).
        """
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        at = find_stop(text, self.stops)
        if at is None:
            return ids, text
        text = text[:at]
        n = len(ids)
        while n > 0 and not text.startswith(
            self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        ):
            n -= 1
        return ids[:n], text
