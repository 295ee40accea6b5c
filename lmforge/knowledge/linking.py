"""Entity linking: find the knowledge-graph entities a text talks about.

Two stages, as in most linkers:

1. Alias match: every entity name and alias is looked for as a whole word (case-insensitive;
   aliases of up to 3 characters, such as ISO codes "FR", only in exactly that case so "in" is
   not India's "IN"). Overlapping matches keep the longest, then the leftmost.
2. Embedding similarity, only when stage 1 finds nothing and an embedding function is given:
   every word n-gram (n <= 3) of the text is embedded and compared with every entity name,
   cos(e_span, e_name) = e_span . e_name for unit vectors; the best pair links when its cosine is
   at least `threshold` (this catches misspellings and paraphrases such as "Frnace").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmforge.knowledge.graph import KnowledgeGraph

EmbedFn = Callable[[Sequence[str]], torch.Tensor]  # texts -> (N, d) unit vectors
SHORT_ALIAS = 3
WORD = re.compile(r"\w[\w'.-]*\w|\w")


@dataclass(frozen=True)
class Link:
    """An entity found in a text: `text[start:end]` names `entity`."""

    entity: str
    start: int
    end: int
    score: float  # 1.0 for an alias match, the cosine for an embedding match
    how: str  # "alias" or "embedding"


def _pattern(names: list[str], flags: int) -> re.Pattern | None:
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", flags)


class EntityLinker:
    """Links text spans to the entities of a `KnowledgeGraph`.

    Args:
        graph: the knowledge graph (its entities and aliases).
        embed: optional texts -> unit-vector embeddings, for the similarity stage.
        threshold: the lowest cosine that links in the similarity stage.
        entities: link only to these entities (default: every head of a triple).
    """

    def __init__(
        self,
        graph: KnowledgeGraph,
        embed: EmbedFn | None = None,
        threshold: float = 0.6,
        entities: Sequence[str] | None = None,
    ) -> None:
        self.graph, self.embed, self.threshold = graph, embed, threshold
        heads = list(dict.fromkeys(t.head for t in graph.triples))
        self.entities = list(entities) if entities is not None else heads
        self._owner: dict[str, str] = {}  # lower-cased name -> entity
        self._exact: dict[str, str] = {}  # short alias -> entity
        for entity in self.entities:
            for name in graph.names(entity):
                if len(name) <= SHORT_ALIAS and name != entity:
                    self._exact.setdefault(name, entity)
                else:
                    self._owner.setdefault(name.lower(), entity)
        self._long = _pattern(list(self._owner), re.IGNORECASE)
        self._short = _pattern(list(self._exact), 0)
        self._name_vectors: torch.Tensor | None = None
        self._name_list: list[tuple[str, str]] = []

    def alias_links(self, text: str) -> list[Link]:
        """Stage 1: whole-word matches of names and aliases, longest first, no overlaps."""
        found: list[Link] = []
        for pattern, owner, key in ((self._long, self._owner, str.lower),
                                    (self._short, self._exact, str)):  # fmt: skip
            if pattern is None:
                continue
            for m in pattern.finditer(text):
                found.append(Link(owner[key(m.group(0))], m.start(), m.end(), 1.0, "alias"))
        found.sort(key=lambda link: (-(link.end - link.start), link.start))
        kept: list[Link] = []
        for link in found:
            if all(link.end <= k.start or link.start >= k.end for k in kept):
                kept.append(link)
        return sorted(kept, key=lambda link: link.start)

    def embedding_links(self, text: str, max_n: int = 3) -> list[Link]:
        """Stage 2: the best (word n-gram, entity name) pair by cosine, if over the threshold."""
        if self.embed is None:
            return []
        words = list(WORD.finditer(text))
        spans = [(words[i].start(), words[j - 1].end())
                 for i in range(len(words)) for j in range(i + 1, min(i + max_n, len(words)) + 1)]  # fmt: skip
        if not spans:
            return []
        if self._name_vectors is None:
            self._name_list = [(n, e) for e in self.entities for n in self.graph.names(e)]
            self._name_vectors = self.embed([n for n, _ in self._name_list])
        vectors = self.embed([text[s:e] for s, e in spans])  # (S, d)
        cosine = vectors @ self._name_vectors.T  # (S, N) unit vectors: dot = cosine
        best = int(cosine.argmax())
        span, name = divmod(best, cosine.size(1))
        score = float(cosine[span, name])
        if score < self.threshold:
            return []
        start, end = spans[span]
        return [Link(self._name_list[name][1], start, end, score, "embedding")]

    def link(self, text: str) -> list[Link]:
        """Alias matches, else the embedding match (if any)."""
        return self.alias_links(text) or self.embedding_links(text)
