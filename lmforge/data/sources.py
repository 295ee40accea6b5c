"""Where text comes from: the embedded default corpus, text/Markdown/JSON files, and the
train/validation split by document."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from lmforge.errors import ConfigError, DataError

#: File endings :func:`read_documents` reads; anything else in a folder is skipped.
SUFFIXES = (".txt", ".md", ".jsonl", ".json")
#: A .txt/.md file longer than this many characters is cut into several documents.
MAX_DOC_CHARS = 1_000_000

# Standard-library modules whose docstrings join the default corpus (each is a longish essay).
_DOC_MODULES = (
    "argparse", "ast", "collections", "copy", "csv", "difflib", "hashlib", "heapq", "inspect",
    "io", "itertools", "json", "os", "pprint", "random", "re", "statistics", "string", "struct",
    "subprocess", "tempfile", "timeit", "tokenize", "typing", "unittest", "uuid", "zlib",
)  # fmt: skip
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")
_USABLE = ", ".join(SUFFIXES)


def default_corpus() -> list[str]:
    """The embedded corpus: English technical prose that ships with Python, no download needed.

    One document per help topic of CPython's ``pydoc_data.topics`` (sorted by topic name; 79
    topics, about 465,000 characters on Python 3.11), then, for a fixed list of standard-library
    modules, one document each of the module docstring followed by the docstrings of its public
    classes and functions (about 180,000 characters). In all about 650,000 characters in 106
    documents; the same list on every machine with the same Python.
    """
    return list(_default_corpus())


@lru_cache(maxsize=1)
def _default_corpus() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)]
    for name in _DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a trimmed-down Python build may lack a module
            continue
        doc = _module_text(module)
        if doc.strip():  # docstrings are None under ``python -OO``
            docs.append(doc)
    return tuple(doc for doc in docs if doc.strip())


def _module_text(module) -> str:
    """A module's docstring followed by those of its public classes and functions, by name."""
    parts = [inspect.getdoc(module) or ""]
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if value.__module__ == module.__name__:
            with warnings.catch_warnings():  # typing's deprecated aliases warn when read
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = inspect.getdoc(value)
            if doc:
                parts.append(f"{key}\n\n{doc}")
    return "\n\n".join(p for p in parts if p)


def read_documents(paths: Sequence[str | Path] | str | Path) -> list[str]:
    """Read documents from files and folders.

    Folders are searched recursively, in sorted path order, for files ending in .txt, .md,
    .jsonl or .json (hidden files and folders, whose names start with ".", are skipped).

    - ``.txt`` / ``.md``: the whole file is one document, kept exactly as written (a leading
      UTF-8 byte-order mark is dropped); a file longer than ``MAX_DOC_CHARS`` is cut at blank
      lines (else at line ends) into documents of at most that size.
    - ``.jsonl``: one JSON object per line, the document is its ``"text"`` field; blank lines
      are skipped.
    - ``.json``: a list of strings, a list of objects with a ``"text"`` field, or one such object.

    Documents that are empty or only whitespace are left out.

    Raises:
        DataError: a path does not exist, a folder has no usable files, a file is not UTF-8 or
            holds invalid JSON, a record lacks ``"text"``, or no text is found at all.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise DataError("no data paths were given; pass a .txt or .jsonl file or a folder of them.")
    docs = [doc for file in _collect_files(paths) for doc in file_documents(file)]
    if not docs:
        names = ", ".join(str(p) for p in paths)
        raise DataError(f"no text found in {names} (every document is empty or blank); add text.")
    return docs


def file_documents(file: Path) -> list[str]:
    """The non-blank documents of one file, by its ending (see :func:`read_documents`)."""
    text = _read_utf8(file)
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        docs = _jsonl_documents(file, text)
    elif suffix == ".json":
        docs = _json_documents(file, text)
    else:
        docs = _cut_long(text, MAX_DOC_CHARS)
    return [doc for doc in docs if doc and not doc.isspace()]


def split_documents(
    docs: Sequence[str], valid_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split documents into (train, valid), the same way on every machine.

    Each document's rank is the SHA-256 of ``seed`` and its text, so where a document lands
    depends only on its text, the seed and the number of documents. The lowest-ranked
    ``max(1, round(valid_fraction * n))`` documents are held out; identical documents always
    land on the same side, so validation never repeats training text. Both lists keep the input
    order. With ``valid_fraction > 0`` and two or more documents each side gets at least one;
    a single document is cut by characters at a paragraph (else line, else word) boundary near
    its end. ``valid_fraction == 0`` holds nothing out.

    Raises:
        ConfigError: ``valid_fraction`` is not in [0, 1).
        DataError: there are no documents, or a single one too short to cut.
    """
    if not isinstance(valid_fraction, int | float) or not 0 <= valid_fraction < 1:
        raise ConfigError(
            f"valid fraction {valid_fraction!r} must be at least 0 and below 1; pass for "
            "example 0.05."
        )
    docs = list(docs)
    if not docs:
        raise DataError("there are no documents to split; read some text first.")
    if valid_fraction == 0:
        return docs, []
    if len(docs) == 1:
        return _split_one(docs[0], valid_fraction)

    n = len(docs)
    n_valid = min(n - 1, max(1, round(valid_fraction * n)))
    groups: dict[bytes, list[int]] = {}
    salt = f"lmforge-split:{seed}\0".encode()
    for index, doc in enumerate(docs):
        key = hashlib.sha256(salt + doc.encode("utf-8", "surrogatepass")).digest()
        groups.setdefault(key, []).append(index)
    valid: list[int] = []
    for key in sorted(groups):
        if len(valid) >= n_valid:
            break
        if len(valid) + len(groups[key]) < n:  # never hold out everything
            valid.extend(groups[key])
    if not valid:  # every document is the same text: hold one copy out
        valid = [n - 1]
    held = set(valid)
    train = [doc for i, doc in enumerate(docs) if i not in held]
    return train, [docs[i] for i in sorted(held)]


# --------------------------------------------------------------------- helpers


def data_files(paths: Sequence[str | Path]) -> list[Path]:
    """The usable files (.txt, .md, .jsonl, .json) named by `paths`, folders searched as in
    `read_documents`; each file once."""
    return _collect_files(paths)


def _collect_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(
                f"data path {path} does not exist; pass a .txt or .jsonl file or a folder of them."
            )
        if path.is_dir():
            found = sorted(
                (
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                ),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not found:
                raise DataError(
                    f"data folder {path} holds no {_USABLE} files; add some or pass another path."
                )
            files.extend(found)
        elif path.suffix.lower() in SUFFIXES:
            files.append(path)
        else:
            raise DataError(
                f"data file {path} has an unsupported ending '{path.suffix}'; pass {_USABLE} files."
            )
    unique: dict[Path, Path] = {}
    for file in files:  # a file named twice (directly and through its folder) is read once
        unique.setdefault(file.resolve(), file)
    return list(unique.values())


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"data file {path} is not valid UTF-8 (bad byte at offset {offset}, line {line}); "
            "re-encode it as UTF-8."
        ) from None


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    # Split on "\n" only: str.splitlines would also split on U+2028, which JSON allows raw.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where} is not valid JSON ({exc.msg}); write one JSON object per line."
            ) from None
        docs.append(_text_field(record, where))
    return docs


def _json_documents(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file."
        ) from None
    if isinstance(data, dict):
        return [_text_field(data, str(path))]
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}; write a list of strings or of "
            'objects with a "text" field.'
        )
    return [
        item if isinstance(item, str) else _text_field(item, f"{path} item {i}")
        for i, item in enumerate(data)
    ]


def _text_field(record: object, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(
            f'{where} is a JSON {type(record).__name__}, not an object; write {{"text": "..."}}.'
        )
    if "text" not in record:
        found = ", ".join(repr(k) for k in record) or "none"
        raise DataError(
            f'{where} has no "text" field (fields found: {found}); put each document under "text".'
        )
    value = record["text"]
    if not isinstance(value, str):
        raise DataError(
            f'{where} has a "text" field of type {type(value).__name__}; make it a string.'
        )
    bad = _SURROGATE.search(value)
    if bad:  # JSON may escape a lone surrogate ("\\ud800"), which is not valid Unicode
        raise DataError(
            f"{where} holds the lone surrogate escape \\u{ord(bad.group()):04x}, which is not "
            "valid Unicode; fix or drop the escape."
        )
    return value


def _cut_long(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters, at blank lines when possible."""
    pieces = []
    while len(text) > limit:
        cut = _boundary_before(text, limit)
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def _boundary_before(text: str, limit: int) -> int:
    for sep in ("\n\n", "\n"):
        pos = text.rfind(sep, 0, limit - len(sep) + 1)
        if pos > 0:
            return pos + len(sep)
    return limit


def _split_one(doc: str, valid_fraction: float) -> tuple[list[str], list[str]]:
    """Cut a single document so that about ``valid_fraction`` of its characters are held out."""
    if len(doc) < 2:
        raise DataError(
            f"the only document has {len(doc)} character(s), too few to hold any out for "
            "validation; add more text or pass a validation fraction of 0."
        )
    want = max(1, round(valid_fraction * len(doc)))
    target = len(doc) - want
    cut = _boundary_near(doc, target, window=want) or target
    cut = min(max(cut, 1), len(doc) - 1)
    return [doc[:cut]], [doc[cut:]]


def _boundary_near(doc: str, target: int, window: int) -> int | None:
    """The paragraph, else line, else word boundary closest to ``target`` within ``window``."""
    for sep in ("\n\n", "\n", " "):
        cuts = []
        # A separator may straddle ``target``, so both searches reach len(sep) - 1 past it.
        reach = len(sep) - 1
        for pos in (doc.rfind(sep, 0, target + reach), doc.find(sep, max(0, target - reach))):
            cut = pos + len(sep)
            if pos >= 0 and 0 < cut < len(doc) and abs(cut - target) <= window:
                if not doc[:cut].isspace() and not doc[cut:].isspace():
                    cuts.append(cut)
        if cuts:
            return min(cuts, key=lambda c: abs(c - target))
    return None
