"""Entity linking (aliases, then embedding similarity), chunking, exact search against the plain
formula, index files, and the prompt transforms."""

from __future__ import annotations

import pytest
import torch
from kn_helpers import FACTS, letters

from lmforge.errors import ConfigError, DataError
from lmforge.knowledge import (
    EntityLinker,
    Index,
    KnowledgeGraph,
    Triple,
    build_index,
    chunk_words,
    cite,
    exact_top_k,
    kg_transform,
    retrieval_transform,
    with_context,
)
from lmforge.knowledge.index import reference_top_k

GRAPH = KnowledgeGraph(
    [Triple("France", "capital", "Paris"), Triple("India", "capital", "New Delhi"),
     Triple("United States", "capital", "Washington"), Triple("United Kingdom", "capital", "London")],
    {"India": ["IN", "IND"], "France": ["FR"]},
)  # fmt: skip


def test_alias_stage_whole_words_longest_match_short_aliases_exact_case():
    linker = EntityLinker(GRAPH)
    text = "Is the UNITED STATES bigger than india, and does FR border IN? Not in Frankfurt."
    found = [(text[x.start : x.end], x.entity, x.how) for x in linker.link(text)]
    assert found == [("UNITED STATES", "United States", "alias"), ("india", "India", "alias"),
                     ("FR", "France", "alias"), ("IN", "India", "alias")]  # fmt: skip
    assert linker.link("nothing to see") == []  # no embedding function: no second stage


def test_embedding_stage_only_without_alias_match_and_over_threshold():
    linker = EntityLinker(GRAPH, embed=letters, threshold=0.99)
    (link,) = linker.link("What is the capital of Frnace?")
    assert (link.entity, link.how) == ("France", "embedding") and link.score > 0.99
    assert linker.link("What is it?") == []  # nothing close enough
    assert [x.how for x in linker.link("France or Frnace?")] == ["alias"]


def test_chunks_overlap_and_cover_every_word():
    words = [f"w{i}" for i in range(23)]
    chunks = chunk_words(" ".join(words), size=10, overlap=3)
    assert [c.split()[0] for c in chunks] == ["w0", "w7", "w14"]
    assert chunks[0].split()[-3:] == chunks[1].split()[:3]  # 3 shared words
    assert chunks[-1].split()[-1] == "w22"
    assert chunk_words("a b", size=10, overlap=3) == ["a b"] and chunk_words("  ") == []
    with pytest.raises(ConfigError, match="overlap < size"):
        chunk_words("a", size=4, overlap=4)


def test_exact_search_matches_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scores, ids = exact_top_k(queries, keys, 5)
    assert ids.tolist() == reference_top_k(queries, keys, 5)
    torch.testing.assert_close(scores, (queries @ keys.T).gather(1, ids))
    assert exact_top_k(queries, keys[:3], 5)[1].shape == (4, 3)  # k > N: all of them


def test_index_files_round_trip_and_search(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "facts.jsonl").write_text("".join(f'{{"text": "{f}"}}\n' for f in FACTS))
    (docs / "long.txt").write_text(" ".join(f"word{i}" for i in range(30)))
    built = build_index(letters, [docs], tmp_path / "idx", model="toy", chunk_size=20, overlap=5)
    index = Index.load(tmp_path / "idx")
    assert index.info["chunks"] == len(index.chunks) == len(built.chunks) == 3 + 2
    torch.testing.assert_close(index.embeddings, built.embeddings)
    (hit,) = index.search(letters([FACTS[1]]), k=1)[0]
    assert hit.chunk["text"] == FACTS[1] and hit.score == pytest.approx(1.0)
    assert (hit.chunk["doc"], hit.chunk["chunk"]) == (1, 0)
    with pytest.raises(ConfigError, match="3 dimensions but the index has 26"):
        index.search(torch.ones(1, 3))
    (tmp_path / "idx" / "chunks.jsonl").unlink()
    with pytest.raises(DataError, match="is not an index dir"):
        Index.load(tmp_path / "idx")


def test_prompt_transforms_put_context_first_and_cite(tmp_path):
    kg = kg_transform(EntityLinker(GRAPH), {"capital": "The capital of {head} is {tail}."})
    out = kg("What is the capital of FR?")
    assert out.prompt == (
        "Context:\n[1] The capital of France is Paris.\n\nWhat is the capital of FR?"
    )
    assert cite(out.sources) == "Sources: [1] kg:France (1.00)"
    assert kg("Tell me a joke.").prompt == "Tell me a joke." and cite([]) == "Sources: none"

    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(f'{{"text": "{f}"}}\n' for f in FACTS))
    index = build_index(letters, [docs], tmp_path / "idx", model="toy")
    out = retrieval_transform(index, letters, top_k=2)(FACTS[2])
    assert out.prompt == with_context(FACTS[2], [s.text for s in out.sources])
    assert out.sources[0].text == FACTS[2] and out.sources[0].origin.endswith("d.jsonl:2#0")
