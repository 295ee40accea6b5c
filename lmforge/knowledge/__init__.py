"""Knowledge injection: KG triples and their verbalization, entity linking, an embedding index
with exact search, and prompt transforms that put facts or retrieved chunks into a prompt."""

from lmforge.knowledge.graph import (
    KnowledgeGraph,
    Triple,
    read_aliases,
    read_templates,
    read_triples,
    verbalize,
    verbalize_all,
)
from lmforge.knowledge.index import Hit, Index, build_index, chunk_words, exact_top_k
from lmforge.knowledge.linking import EntityLinker, Link
from lmforge.knowledge.prompts import (
    Augmented,
    PromptTransform,
    Source,
    cite,
    kg_transform,
    retrieval_transform,
    with_context,
)

__all__ = [
    "Augmented",
    "EntityLinker",
    "Hit",
    "Index",
    "KnowledgeGraph",
    "Link",
    "PromptTransform",
    "Source",
    "Triple",
    "build_index",
    "chunk_words",
    "cite",
    "exact_top_k",
    "kg_transform",
    "read_aliases",
    "read_templates",
    "read_triples",
    "retrieval_transform",
    "verbalize",
    "verbalize_all",
    "with_context",
]
