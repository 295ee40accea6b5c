"""Tokenize long prompts in a worker process.

The Rust tokenizer holds Python's GIL for long stretches on a large input: tokenizing a few
~1 MB prompts at once on worker threads starves the server's event loop (/health then takes
seconds). Prompts longer than `threshold` characters are therefore encoded in a separate process
(spawned, one tokenizer loaded once), where they share no GIL with the server; shorter ones are
encoded in place, where a process round trip would cost more than it saves. The ids are the
same either way: the worker runs the very same tokenizer (its JSON), with the same options.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_worker_backend: Any = None


def _load(tokenizer_json: str) -> None:
    global _worker_backend
    import tokenizers

    _worker_backend = tokenizers.Tokenizer.from_str(tokenizer_json)


def _encode(text: str, add_special_tokens: bool) -> list[int]:
    return _worker_backend.encode(text, add_special_tokens=add_special_tokens).ids


class OffloadedTokenizer:
    """A `Tokenizer` whose `encode` of a long text runs in a worker process; every other
    attribute is the wrapped tokenizer's.

    Args:
        tokenizer: an lmforge `Tokenizer`.
        threshold: texts longer than this many characters go to the worker.
        workers: worker processes.
    """

    def __init__(self, tokenizer: Any, threshold: int = 32_768, workers: int = 1) -> None:
        self._inner, self._threshold = tokenizer, threshold
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load,
            initargs=(tokenizer.backend.to_str(),),
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`, as `Tokenizer.encode` gives them."""
        if not isinstance(text, str) or len(text) <= self._threshold:
            return self._inner.encode(text, add_special_tokens=add_special_tokens)
        try:
            return self._pool.submit(_encode, text, add_special_tokens).result()
        except (TypeError, ValueError, UnicodeError):
            return self._inner.encode(text, add_special_tokens=add_special_tokens)  # its error

    def close(self) -> None:
        """Stop the worker process."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
