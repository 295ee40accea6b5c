"""Text sources, the embedded default corpus and the train/validation split."""

from lmforge.data.sources import (
    MAX_DOC_CHARS,
    SUFFIXES,
    default_corpus,
    read_documents,
    split_documents,
)

__all__ = [
    "MAX_DOC_CHARS",
    "SUFFIXES",
    "default_corpus",
    "read_documents",
    "split_documents",
]
