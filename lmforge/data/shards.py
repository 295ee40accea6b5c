"""Token shards: a large corpus tokenized once, in parallel, into memory-mapped files.

A shard folder (made by :func:`prepare_shards`, read by :class:`ShardedTokens`) holds::

    manifest.json                       written last: format, dtype, tokenizer hash, shards
    tokenizer.json, tokenizer_config.json
    train-00000.bin, train-00001.bin, ...
    valid-00000.bin, ...                only when documents were held out

Each ``.bin`` file is raw little-endian ``uint16`` (vocabulary of at most 65,536 ids) or
``uint32`` tokens laid out like :func:`lmforge.data.lm.tokens_from_documents`:
``[BOS] doc [EOS] [BOS] doc [EOS] ...``, whole documents only. :class:`ShardWindows` draws
training batches from them the way :class:`lmforge.data.lm.TokenWindows` does from one array:
each step's batch comes from a generator keyed on (seed, step, micro-batch), so resuming at step
N seeks straight to it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.shard_prepare import (
    FORMAT,
    MANIFEST,
    SPLITS,
    TOKENIZER_FILES,
    VERSION,
    Split,
    is_shard_dir,
    prepare_shards,
    tokenizer_fingerprint,
)
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer
from lmforge.utils.fs import sha256_file

__all__ = [
    "ShardSplit",
    "tokenizer_fingerprint",
    "ShardWindows",
    "ShardedTokens",
    "is_shard_dir",
    "prepare_shards",
]


# --------------------------------------------------------------------- reading


class ShardSplit:
    """One split of a shard folder: its shards, memory-mapped read-only, end to end.

    Token positions are global: shard 0's tokens come first, then shard 1's, and so on.
    """

    def __init__(self, name: str, shards: list[np.ndarray], where: Path) -> None:
        self.name = name
        self.where = where
        self.shards = shards
        self.lengths = np.array([len(s) for s in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, global_start: int, length: int) -> np.ndarray:
        """``length`` tokens from ``global_start``; a window must lie inside one shard."""
        index = int(np.searchsorted(self.offsets, global_start, side="right")) - 1
        if not 0 <= index < len(self.shards):
            raise ValueError(
                f"token {global_start} is outside the {len(self)} tokens of {self.name}."
            )
        local = global_start - int(self.offsets[index])
        if local + length > self.lengths[index]:
            raise ValueError(
                f"the window [{global_start}, {global_start + length}) crosses the end of shard "
                f"{index} of {self.name}; windows must lie inside one shard."
            )
        return self.shards[index][local : local + length]


class ShardedTokens:
    """An opened shard folder: the manifest checked, every shard memory-mapped read-only.

    Args:
        path: a folder made by :func:`prepare_shards`.
        verify: also check every file's SHA-256 against the manifest (reads all the data).

    Raises:
        DataError: the manifest is missing or unreadable, a shard or tokenizer file is missing,
            has the wrong size, or (with ``verify``) the wrong hash.
    """

    def __init__(self, path: str | Path, *, verify: bool = False) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        m = self.manifest
        self.dtype = np.dtype(m["dtype"]).newbyteorder("<")
        self.vocab_size: int = m["vocab_size"]
        self.bos_id: int | None = m["bos_id"]
        self.eos_id: int | None = m["eos_id"]
        _check_file(self.path / TOKENIZER_FILES[0], m["tokenizer_sha256"], None, True)
        self._splits: dict[str, list[np.ndarray]] = {}
        for split in SPLITS:
            maps = []
            for entry in m["splits"][split]:
                file = self.path / entry["file"]
                size = entry["n_tokens"] * self.dtype.itemsize
                _check_file(file, entry["sha256"], size, verify)
                maps.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(entry["n_tokens"],)))
            self._splits[split] = maps

    def split(self, name: Split = "train") -> ShardSplit:
        """The ``"train"`` or ``"valid"`` split (possibly empty: check ``len()``)."""
        if name not in self._splits:
            raise DataError(f"unknown split '{name}'; use 'train' or 'valid'.")
        return ShardSplit(name, self._splits[name], self.path)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were made with (copied into the folder)."""
        return Tokenizer.load(self.path)

    def fingerprint(self) -> str:
        """SHA-256 of the shards' content (every shard's hash, in order): equal for the same
        tokens in the same shards, whatever folder they were copied to."""
        splits = {name: [e["sha256"] for e in self.manifest["splits"][name]] for name in SPLITS}
        return hashlib.sha256(json.dumps(splits).encode()).hexdigest()

    def check_tokenizer(self, tok: Tokenizer, what: str) -> None:
        """Refuse `tok` (named `what` in the message) when it is not the shards' tokenizer."""
        expected = self.manifest.get("tokenizer_fingerprint")
        if expected is None:  # a folder prepared before fingerprints were recorded
            expected = tokenizer_fingerprint(self.tokenizer())
        if tokenizer_fingerprint(tok) != expected:
            raise DataError(
                f"{what} is not the tokenizer the shards in {self.path} were made with, so its "
                "ids would mean other text; use the shards' own tokenizer (drop --tokenizer) or "
                "run `lmforge data prepare` again with this one."
            )


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    hint = "make one with `lmforge data prepare`"
    if not file.is_file():
        raise DataError(f"{path} is not a token shard folder (no {MANIFEST}); {hint}.")
    try:
        m = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file} is not valid JSON ({exc}); {hint} again.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{file} is not a token shard manifest; {hint}.")
    if m.get("version") != VERSION:
        raise DataError(
            f"{file} has format version {m.get('version')!r}, this lmforge reads {VERSION}; "
            f"{hint} again."
        )
    keys = ("dtype", "vocab_size", "bos_id", "eos_id", "tokenizer_sha256", "splits")
    missing = [k for k in keys if k not in m] + [s for s in SPLITS if s not in m.get("splits", {})]
    if missing or m["dtype"] not in ("uint16", "uint32"):
        what = f"lacks {', '.join(missing)}" if missing else f"has dtype {m['dtype']!r}"
        raise DataError(f"{file} {what}; {hint} again.")
    return m


def _check_file(file: Path, sha256: str, size: int | None, verify: bool) -> None:
    hint = "re-run `lmforge data prepare` for this folder"
    if not file.is_file():
        raise DataError(
            f"{file.name} is listed in the manifest of {file.parent} but missing; {hint}."
        )
    if size is not None and file.stat().st_size != size:
        raise DataError(
            f"{file} has {file.stat().st_size} bytes but the manifest says {size}; the file is "
            f"truncated or from another run, {hint}."
        )
    if verify and sha256_file(file) != sha256:
        raise DataError(
            f"{file} does not match its SHA-256 in the manifest; the file changed or is damaged, "
            f"{hint}."
        )


# --------------------------------------------------------------------- sampling


class ShardWindows:
    """Windows of ``seq_len + 1`` tokens drawn from a shard split, like ``TokenWindows``.

    A window w gives input_ids = w[:-1] and labels = w[1:]. Shard i offers
    ``len_i - seq_len - 1`` window starts; a start is drawn uniformly from all of them, which
    picks a shard with probability proportional to its starts and then a place inside it, so a
    window never crosses a shard boundary. With one shard the batches equal ``TokenWindows``'s
    for the same tokens and seed.
    """

    def __init__(
        self,
        split: ShardSplit,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        self.split = split
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.starts = np.maximum(split.lengths - seq_len - 1, 0)  # window starts per shard
        self.start_offsets = np.concatenate([[0], np.cumsum(self.starts)]).astype(np.int64)
        if self.start_offsets[-1] == 0:
            longest = int(split.lengths.max()) if len(split.lengths) else 0
            raise DataError(
                f"the {name or split.name} split of {split.where} has no shard with one window of "
                f"seq_len+1={seq_len + 1} tokens (longest shard: {longest}); lower seq_len, or "
                "add text or raise the valid fraction and run `lmforge data prepare` again."
            )

    def batch(
        self, step: int, micro: int = 0, rank: int = 0, world: int = 1
    ) -> dict[str, torch.Tensor]:
        """This rank's share of a step's micro-batch.

        The global micro-batch (batch_size * world windows) is drawn from a generator seeded by
        (seed, step, micro), so it is the same on every run and every resume (a resume seeks, it
        does not replay), and N ranks together see exactly what one process would.
        """
        rng = np.random.default_rng([self.seed, step, micro])
        draws = rng.integers(0, int(self.start_offsets[-1]), size=self.batch_size * world)
        draws = draws[rank * self.batch_size : (rank + 1) * self.batch_size]
        shard = np.searchsorted(self.start_offsets, draws, side="right") - 1
        starts = self.split.offsets[shard] + (draws - self.start_offsets[shard])
        return self._stack([int(s) for s in starts])

    def sequential(self, max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Non-overlapping windows from the start of each shard in turn (evaluation),
        ``batch_size`` at a time."""
        starts: list[int] = []
        n_batches = 0
        for offset, length in zip(self.split.offsets[:-1], self.split.lengths, strict=True):
            for at in range((int(length) - 1) // self.seq_len):
                starts.append(int(offset) + at * self.seq_len)
                if len(starts) == self.batch_size:
                    if max_batches is not None and n_batches >= max_batches:
                        return
                    yield self._stack(starts)
                    starts, n_batches = [], n_batches + 1
        if starts and (max_batches is None or n_batches < max_batches):
            yield self._stack(starts)

    def _stack(self, starts: list[int]) -> dict[str, torch.Tensor]:
        windows = [self.split.window(s, self.seq_len + 1) for s in starts]
        w = torch.from_numpy(np.stack(windows).astype(np.int64))  # (B, T+1)
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}
