"""Prompt transforms: knowledge-augmented and retrieval-augmented prompts.

A prompt transform is a function `prompt -> Augmented(prompt, sources)`. Generation, chat and the
server call one before encoding the prompt, so the model reads the passages first:

    Context:
    [1] The capital of France is Paris. The currency of France is the Euro.
    [2] ...

    What is the capital of France?

and the caller prints the sources after the answer ("Sources: [1] france.txt:0#0 (0.82)"); the
server adds them as a `sources` list to a non-streamed response body.
Both knowledge-graph facts (`kg_transform`) and retrieved chunks (`retrieval_transform`) use
this one layout, so a model taught to read one reads the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lmforge.knowledge.graph import KnowledgeGraph, verbalize
from lmforge.knowledge.index import EmbedFn, Index, origin
from lmforge.knowledge.linking import EntityLinker


@dataclass(frozen=True)
class Source:
    """A passage put into the prompt, and where it came from."""

    text: str
    origin: str  # "france.txt:0#0" for a chunk, "kg:France" for an entity's facts
    score: float


@dataclass(frozen=True)
class Augmented:
    """The augmented prompt and the sources it cites, numbered [1], [2], ... in order."""

    prompt: str
    sources: list[Source]


PromptTransform = Callable[[str], Augmented]


def with_context(prompt: str, passages: Sequence[str]) -> str:
    """ "Context:\\n[1] p_1\\n[2] p_2 ...\\n\\n" + prompt; the prompt alone when there are none."""
    if not passages:
        return prompt
    lines = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    return f"Context:\n{lines}\n\n{prompt}"


def cite(sources: Sequence[Source]) -> str:
    """One line naming the sources: "Sources: [1] a.txt:0#0 (0.82); [2] kg:France (1.00)"."""
    if not sources:
        return "Sources: none"
    return "Sources: " + "; ".join(
        f"[{i}] {s.origin} ({s.score:.2f})" for i, s in enumerate(sources, 1)
    )


def entity_facts(
    graph: KnowledgeGraph, entity: str, templates: Mapping[str, str] | None = None
) -> str:
    """The entity's facts (where it is the head) verbalized as one passage."""
    return " ".join(verbalize(t, templates) for t in graph.about(entity, as_head_only=True))


def kg_transform(
    linker: EntityLinker, templates: Mapping[str, str] | None = None, max_entities: int = 3
) -> PromptTransform:
    """A transform that links the prompt's entities and puts their facts into the context."""

    def transform(prompt: str) -> Augmented:
        seen: list[tuple[str, float]] = []
        for link in linker.link(prompt):
            if link.entity not in (e for e, _ in seen):
                seen.append((link.entity, link.score))
        sources = [Source(entity_facts(linker.graph, e, templates), f"kg:{e}", score)
                   for e, score in seen[:max_entities]]  # fmt: skip
        sources = [s for s in sources if s.text]
        return Augmented(with_context(prompt, [s.text for s in sources]), sources)

    return transform


def retrieval_transform(index: Index, embed: EmbedFn, top_k: int = 3) -> PromptTransform:
    """A transform that embeds the prompt, retrieves the top-k chunks and puts them first."""

    def transform(prompt: str) -> Augmented:
        hits = index.search(embed([prompt]), top_k)[0]
        sources = [Source(h.chunk["text"], origin(h.chunk), h.score)
                   for h in hits]  # fmt: skip
        return Augmented(with_context(prompt, [s.text for s in sources]), sources)

    return transform
