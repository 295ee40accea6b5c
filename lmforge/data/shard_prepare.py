"""Writing token shards: :func:`prepare_shards` tokenizes a corpus, in parallel, into the
shard folder that :mod:`lmforge.data.shards` describes and reads."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmforge.data import sources
from lmforge.data.lm import token_dtype
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer
from lmforge.utils.fs import (
    RUN_MARKER,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    prepare_out_dir,
    sha256_file,
)

FORMAT = "lmforge-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
#: Tokenizer files copied into a shard folder when the source folder has them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
Split = Literal["train", "valid"]
SPLITS: tuple[Split, ...] = ("train", "valid")
_CHUNK_CHARS = 1 << 22  # characters of text per tokenization task
_READ_BYTES = 1 << 24  # bytes of a text file read at a time
# Names a shard folder may hold besides the tokenizer files: shards, the manifest, and the
# hidden temporary files (".NAME.XXXX.tmp") an interrupted atomic write leaves behind.
_OURS = re.compile(r"^(manifest\.json|lmforge_run\.json|(train|valid)-\d{5,}\.bin|\..+\.tmp)$")
_WORKER: dict[str, Tokenizer] = {}


def prepare_shards(
    paths: Sequence[str | Path] | str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    workers: int = 1,
    shard_tokens: int = 50_000_000,
    valid_fraction: float = 0.01,
    seed: int = 0,
) -> Path:
    """Tokenize text files into token shards in ``out_dir`` and return ``out_dir``.

    Files are found and read as :func:`lmforge.data.read_documents` reads them, one file at a
    time, so memory holds one file's text rather than the corpus. A document is held out for
    validation when the first 8 bytes of SHA-256(``"lmforge-split:{seed}\\0"`` + text), read as
    a fraction of 2**64, fall below ``valid_fraction``: the choice depends only on the text and
    the seed (identical documents land on the same side), never on order or worker count, so
    the output is byte for byte the same for any ``workers``. When that holds out no document
    (a small corpus, a one-file corpus) the last ``valid_fraction`` of the training tokens is
    held out instead (see :func:`_hold_out_tail`; the manifest's ``held_out`` says which way).
    Files stream through (see :func:`stream_documents`), so a corpus need not fit in memory. A shard holds whole documents and is closed once it has ``shard_tokens`` tokens or more.

    Args:
        paths: text/Markdown/JSON(L) files or folders.
        tokenizer_dir: a tokenizer folder (or its ``tokenizer.json``); its files are copied in.
        out_dir: a new or empty folder, or an earlier shard folder (which is replaced).
        workers: processes that tokenize in parallel; 1 tokenizes in this process.
        shard_tokens: tokens per shard, at least (the last shard of a split may hold fewer).
        valid_fraction: expected share of documents held out, in [0, 1).
        seed: salt of the held-out choice.

    Raises:
        DataError: a data path is missing or unreadable, there is no text, or ``out_dir`` holds
            other files.
        ConfigError: ``workers``, ``shard_tokens`` or ``valid_fraction`` is out of range.
    """
    _check_args(workers, shard_tokens, valid_fraction)
    out = Path(out_dir)
    tok = Tokenizer.load(tokenizer_dir)  # fails early, with a clear error, on a bad folder
    if isinstance(paths, str | Path):
        paths = [paths]
    files = sources._collect_files(paths) if paths else []
    if not files:
        raise DataError("no data paths were given; pass a .txt or .jsonl file or a folder of them.")
    inside = out.resolve()  # the shard folder's own JSON files are not data
    files = [f for f in files if not f.resolve().is_relative_to(inside)]
    # the shared check that --out is no input; _claim_out_dir refuses a folder of other files
    prepare_out_dir(
        out, "token-shards", inputs=[tokenizer_dir, *paths], overwrite=True, write=False
    )
    _claim_out_dir(out)
    tok_sha = _copy_tokenizer(tokenizer_dir, out)
    dtype = token_dtype(tok.vocab_size).newbyteorder("<")

    chunks = _chunks(files)
    encoded = _encode_all(chunks, out, workers, valid_fraction, seed, dtype)
    with (
        contextlib.closing(encoded),
        _ShardWriter(out, "train", dtype, shard_tokens) as train,
        _ShardWriter(out, "valid", dtype, shard_tokens) as valid,
    ):
        for ids, lengths, held in encoded:
            token_held = np.repeat(held, lengths)
            train.add(ids[~token_held], lengths[~held])
            valid.add(ids[token_held], lengths[held])
    if not train.entries and not valid.entries:
        names = ", ".join(str(p) for p in paths)
        raise DataError(f"no text found in {names} (every document is empty or blank); add text.")
    held_out = "documents"
    if valid_fraction > 0 and not valid.entries:
        held_out = _hold_out_tail(out, train.entries, valid.entries, valid_fraction, tok, dtype)

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "byte_order": "little",
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "tokenizer_sha256": tok_sha,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "valid_fraction": valid_fraction,
        "held_out": held_out,
        "seed": seed,
        "shard_tokens": shard_tokens,
        "sources": [str(p) for p in paths],
        "splits": {"train": train.entries, "valid": valid.entries},
        "totals": {name: _totals(w.entries) for name, w in (("train", train), ("valid", valid))},
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out


def _hold_out_tail(
    out: Path,
    train: list[dict[str, Any]],
    valid: list[dict[str, Any]],
    valid_fraction: float,
    tok: Tokenizer,
    dtype: np.dtype,
) -> str:
    """When hashing held out no document (a small corpus, one file), move the last
    ``valid_fraction`` of the training tokens to a validation shard; return how.

    The cut goes at the start of a document (a BOS) within that many tokens of the target, so
    whole documents move ("tail documents"); with none near, the last document is cut in two
    and each half gets its EOS/BOS ("tail of a document"), as a split of one text would.
    """
    last = train[-1]
    tokens = np.fromfile(out / last["file"], dtype=dtype)
    total = sum(e["n_tokens"] for e in train)
    want = min(max(1, round(valid_fraction * total)), len(tokens) - 1)
    if want < 1:
        return "none (too few tokens)"
    target = len(tokens) - want
    starts = np.flatnonzero(tokens == tok.bos_id) if tok.bos_id is not None else np.array([])
    near = starts[(starts > 0) & (np.abs(starts - target) <= want)]
    bos = [] if tok.bos_id is None else [tok.bos_id]
    eos = [] if tok.eos_id is None else [tok.eos_id]
    if len(near):
        cut = int(near[np.argmin(np.abs(near - target))])
        head, tail = tokens[:cut], tokens[cut:]
        moved, how = int((tail == tok.bos_id).sum()), "tail documents"
        n_head, n_tail = last["n_documents"] - moved, moved
    else:
        head = np.concatenate([tokens[:target], np.asarray(eos, dtype)])
        tail = np.concatenate([np.asarray(bos, dtype), tokens[target:]])
        how, n_head, n_tail = "tail of a document", last["n_documents"], 1
    for entries, name, part, n_docs in (
        (valid, "valid-00000.bin", tail, n_tail),
        (None, last["file"], head, n_head),
    ):
        data = part.astype(dtype).tobytes()
        atomic_write_bytes(out / name, data)
        entry = {
            "file": name,
            "n_tokens": len(part),
            "n_documents": n_docs,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if entries is None:
            train[-1] = entry
        else:
            entries.append(entry)
    return how


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """SHA-256 of a tokenizer's content: its vocabulary, merges, normalizer and pre-tokenizer
    (the compact ``tokenizer.json``) and its special-token roles. Two tokenizers with the same
    fingerprint give the same ids for every text, however their files were formatted."""
    roles = json.dumps(sorted(tok.roles.items()))
    return hashlib.sha256((tok.backend.to_str() + "\0" + roles).encode("utf-8")).hexdigest()


def is_shard_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder with a token-shard ``manifest.json``."""
    manifest = Path(path) / MANIFEST
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_args(workers: int, shard_tokens: int, valid_fraction: float) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a whole number of 1 or more; pass e.g. 4.")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ConfigError(
            f"shard_tokens={shard_tokens!r} must be a whole number of 1 or more; pass e.g. "
            "50000000."
        )
    if not isinstance(valid_fraction, int | float) or not 0 <= valid_fraction < 1:
        raise ConfigError(
            f"valid fraction {valid_fraction!r} must be at least 0 and below 1; pass e.g. 0.01."
        )


def _only_ours(out: Path) -> bool:
    """True when ``out`` holds only files a shard folder has (one prepared before markers)."""
    return all(_OURS.match(p.name) or p.name in TOKENIZER_FILES for p in out.iterdir())


def _claim_out_dir(out: Path) -> None:
    """Make ``out`` ready: new, empty, or holding only shard-folder files (which are removed)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} is a file; pass a folder for the shards.")
    out.mkdir(parents=True, exist_ok=True)
    ours = [p for p in out.iterdir() if _OURS.match(p.name) or p.name in TOKENIZER_FILES]
    if not _only_ours(out):
        raise DataError(
            f"output folder {out} holds files that are not token shards; pass an empty or new "
            "folder, or an earlier `lmforge data prepare` output to replace."
        )
    if (out / MANIFEST).exists():  # unseal first: no manifest until the new shards are in place
        (out / MANIFEST).unlink()
        fsync_dir(out)
    for path in ours:
        if path.name not in TOKENIZER_FILES and path.name not in (MANIFEST, RUN_MARKER):
            path.unlink()


def _copy_tokenizer(tokenizer_dir: str | Path, out: Path) -> str:
    """Copy the tokenizer files into ``out``; return the SHA-256 of tokenizer.json."""
    src = Path(tokenizer_dir)
    src = src.parent if src.is_file() else src
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            atomic_write_bytes(out / name, (src / name).read_bytes())
        elif (out / name).exists():  # left from an earlier tokenizer; it would mislead load()
            (out / name).unlink()
    return sha256_file(out / TOKENIZER_FILES[0])


def _chunks(files: list[Path]) -> Iterator[list[str]]:
    """Lists of documents of about ``_CHUNK_CHARS`` characters, file by file, in order."""
    for file in files:
        batch: list[str] = []
        size = 0
        for doc in stream_documents(file):
            batch.append(doc)
            size += len(doc)
            if size >= _CHUNK_CHARS:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch


def stream_documents(file: Path) -> Iterator[str]:
    """The documents of one file, as :func:`lmforge.data.sources.file_documents` gives them,
    read piece by piece so that a file larger than memory streams through.

    ``.txt``/``.md`` files are read ``_READ_BYTES`` at a time and cut into documents of at most
    ``MAX_DOC_CHARS`` characters at the same places as ``file_documents``; ``.jsonl`` files are
    read line by line; a ``.json`` file is one JSON value and is read whole.
    """
    suffix = file.suffix.lower()
    if suffix == ".json":
        yield from sources.file_documents(file)
    elif suffix == ".jsonl":
        yield from _stream_jsonl(file)
    else:
        for doc in _stream_text(file, sources.MAX_DOC_CHARS):
            if doc and not doc.isspace():
                yield doc


def _stream_text(file: Path, limit: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, offset, first = "", 0, True
    with open(file, "rb") as f:
        while True:
            data = f.read(_READ_BYTES)
            if first and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            first = False
            try:
                buffer += decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"data file {file} is not valid UTF-8 (bad byte near offset "
                    f"{offset + exc.start}); re-encode it as UTF-8."
                ) from None
            offset += len(data)
            while len(buffer) > limit:  # the cut sees the first `limit` characters, as before
                cut = sources._boundary_before(buffer, limit)
                yield buffer[:cut]
                buffer = buffer[cut:]
            if not data:
                yield buffer
                return


def _stream_jsonl(file: Path) -> Iterator[str]:
    with open(file, "rb") as f:  # binary lines end at b"\n" only, as JSON Lines wants
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            where = f"{file}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(
                    f"{where} is not valid UTF-8; re-encode the file as UTF-8."
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where} is not valid JSON ({exc.msg}); write one JSON object per line."
                ) from None
            doc = sources._text_field(record, where)
            if doc and not doc.isspace():
                yield doc


Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # (token ids, tokens per doc, held out)


def _encode_all(
    chunks: Iterator[list[str]],
    tokenizer_dir: Path,
    workers: int,
    valid_fraction: float,
    seed: int,
    dtype: np.dtype,
) -> Iterator[Encoded]:
    """Encode chunks in order; with ``workers > 1`` in a process pool, at most 2 per worker
    in flight so memory stays bounded."""
    args = (valid_fraction, seed, dtype)
    if workers == 1:
        tok = Tokenizer.load(tokenizer_dir)
        for docs in chunks:
            yield _encode(tok, docs, *args)
        return
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(tokenizer_dir),))
    try:
        pending: deque = deque()
        for docs in chunks:
            pending.append(pool.submit(_encode_in_worker, docs, *args))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(tokenizer_dir: str) -> None:
    """Pool initializer: load the tokenizer once per worker; one thread each (N workers, N cores)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tok"] = Tokenizer.load(tokenizer_dir)


def _encode_in_worker(
    docs: list[str], valid_fraction: float, seed: int, dtype: np.dtype
) -> Encoded:
    return _encode(_WORKER["tok"], docs, valid_fraction, seed, dtype)


def _encode(
    tok: Tokenizer, docs: list[str], valid_fraction: float, seed: int, dtype: np.dtype
) -> Encoded:
    """[BOS] doc [EOS] per document, joined; each document's length; whether it is held out."""
    head = [] if tok.bos_id is None else [tok.bos_id]
    tail = [] if tok.eos_id is None else [tok.eos_id]
    encoded = tok.encode_batch(docs)
    lengths = np.fromiter((len(e) + len(head) + len(tail) for e in encoded), np.int64, len(docs))
    flat = chain.from_iterable(chain(head, e, tail) for e in encoded)
    ids = np.fromiter(flat, dtype, int(lengths.sum()))
    salt = f"lmforge-split:{seed}\0".encode()
    limit = int(valid_fraction * 2**64)
    held = np.fromiter((_rank(salt, d) < limit for d in docs), bool, len(docs))
    return ids, lengths, held


def _rank(salt: bytes, doc: str) -> int:
    digest = hashlib.sha256(salt + doc.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def _totals(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "n_tokens": sum(e["n_tokens"] for e in entries),
        "n_documents": sum(e["n_documents"] for e in entries),
        "n_shards": len(entries),
    }


class _ShardWriter:
    """Writes one split's shards atomically (temp file, fsync, rename), hashing as it goes."""

    def __init__(self, out: Path, split: Split, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.entries: list[dict[str, Any]] = []
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:
            if exc[0] is None:
                self._close()
            else:  # an error: the temp file is dropped, nothing half-written is left
                self._stack.__exit__(*exc)

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents (``ids`` joined, ``lengths`` tokens each)."""
        ends = np.cumsum(lengths)
        done_docs = done_tokens = 0
        while done_docs < len(lengths):
            if self._stack is None:
                self._open()
            rel = ends[done_docs:] - done_tokens  # document ends, relative to what is written
            # the first document that brings the shard to shard_tokens closes it
            take = min(int(np.searchsorted(rel, self.shard_tokens - self._n_tokens)) + 1, len(rel))
            stop = done_tokens + int(rel[take - 1])
            data = ids[done_tokens:stop].tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._n_tokens += stop - done_tokens
            self._n_documents += take
            done_docs, done_tokens = done_docs + take, stop
            if self._n_tokens >= self.shard_tokens:
                self._close()

    def _open(self) -> None:
        self._name = f"{self.split}-{len(self.entries):05d}.bin"
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.out / self._name))
        self._file = self._stack.enter_context(open(tmp, "wb"))
        self._hash = hashlib.sha256()
        self._n_tokens = self._n_documents = 0

    def _close(self) -> None:
        assert self._stack is not None
        self._stack.close()  # closes the file, then fsyncs and renames it into place
        self._stack = None
        self.entries.append(
            {
                "file": self._name,
                "n_tokens": self._n_tokens,
                "n_documents": self._n_documents,
                "sha256": self._hash.hexdigest(),
            }
        )
