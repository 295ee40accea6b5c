"""Streaming detokenization: turn token ids into text one id at a time."""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.tokenizer.core import Tokenizer

_REPLACEMENT = "\ufffd"
# How many prompt ids to decode as left context, so the first delta gets the right spacing.
_CONTEXT_IDS = 6


class IncrementalDecoder:
    """Decode a growing list of ids and hand out only the text that is new and complete.

    A byte-level token can hold part of a UTF-8 character (one emoji is often split across
    several tokens); decoding such a tail gives ``U+FFFD``. The decoder keeps a window of ids:
    ``prefix`` (already emitted, kept as context) and ``pending`` (not yet emitted). Each step
    decodes ``prefix`` and ``prefix + pending``; when the longer text does not end in
    ``U+FFFD``, the part past the shorter text is the delta, and the window slides forward.
    Decoding a window rather than single ids also keeps WordPiece spacing right.

    Example:
        >>> dec = IncrementalDecoder(tok)
        >>> text = "".join(dec.step(i) for i in ids) + dec.finish()

    Args:
        tokenizer: the tokenizer that made the ids.
        skip_special_tokens: leave special tokens out of the text.
        prompt_ids: ids already shown to the user (for example the prompt); used as context only.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        skip_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = [int(i) for i in prompt_ids]
        self._read = len(self._ids)  # ids before this index have been emitted
        self._prefix = max(0, self._read - _CONTEXT_IDS)  # decoding window starts here
        self._emitted: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    def step(self, token_id: int) -> str:
        """Add one id; return the newly completed text (often ``""`` mid-character)."""
        self._ids.append(int(token_id))
        return self._advance(final=False)

    def finish(self) -> str:
        """Return whatever is still held back (an incomplete character shows as ``U+FFFD``)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        decode = self._tokenizer.decode
        shown = decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip)
        full = decode(self._ids[self._prefix :], skip_special_tokens=self._skip)
        if not final and (len(full) <= len(shown) or full.endswith(_REPLACEMENT)):
            return ""  # nothing new yet, or the tail is part of a character: wait for more ids
        delta = full[len(shown) :]
        self._prefix, self._read = self._read, len(self._ids)
        self._emitted.append(delta)
        return delta
