"""Front doors of `lmforge.knowledge`: load prompt transforms from files, build indexes, verbalize.

    load_retriever(idx/, top_k)      -> prompt transform (retrieval-augmented generation)
    load_kg(triples, aliases, ...)   -> prompt transform (knowledge-augmented prompts)
    build_index_from_dir(model, docs, idx/) -> an index dir (embeddings with `Embedder`)
    verbalize_file(triples, out)     -> text for continued pretraining

`generate`, `chat` and `serve` take any prompt transform (`--retrieve idx/ --top-k K`,
`--kg triples.tsv`) and print the sources it cites after the answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lmforge.errors import DataError
from lmforge.knowledge.graph import KnowledgeGraph, read_templates, verbalize_all
from lmforge.knowledge.index import Index, build_index
from lmforge.knowledge.linking import EntityLinker
from lmforge.knowledge.prompts import PromptTransform, kg_transform, retrieval_transform
from lmforge.recipes.embed import Embedder
from lmforge.utils.fs import atomic_write_text


def load_retriever(
    index_dir: str | Path, top_k: int = 3, embed_model: str | Path | None = None
) -> PromptTransform:
    """A retrieval prompt transform over an index dir, embedding queries with the index's model
    (or `embed_model`, which must be the same model or one fine-tuned from it)."""
    index = Index.load(index_dir)
    model = embed_model or index.model
    if not Path(model).is_dir():
        raise DataError(
            f"the index {index_dir} was built with the embedding model {model}, which is not "
            "there any more; pass --embed-model DIR or rebuild the index."
        )
    return retrieval_transform(index, Embedder(model), top_k)


def load_kg(
    triples: str | Path,
    aliases: str | Path | None = None,
    templates: str | Path | None = None,
    embed_model: str | Path | None = None,
    threshold: float = 0.6,
    max_entities: int = 3,
) -> PromptTransform:
    """A knowledge-augmented prompt transform: link entities (aliases, then `embed_model`
    similarity if given) and put their verbalized facts into the prompt."""
    graph = KnowledgeGraph.load(triples, aliases)
    embedder = Embedder(embed_model) if embed_model is not None else None
    linker = EntityLinker(graph, embedder, threshold)
    tmpl = read_templates(templates) if templates is not None else None
    return kg_transform(linker, tmpl, max_entities)


def build_index_from_dir(
    model_dir: str | Path,
    data: Sequence[str | Path],
    out_dir: str | Path,
    chunk_size: int = 200,
    overlap: int = 40,
    batch_size: int = 64,
) -> Index:
    """`lmforge index build`: chunk, embed with the model in `model_dir`, write `out_dir`."""
    embedder = Embedder(model_dir, batch_size=batch_size)
    return build_index(embedder, data, out_dir, model=str(Path(model_dir).resolve()),
                       chunk_size=chunk_size, overlap=overlap, batch_size=batch_size)  # fmt: skip


def search_index(index_dir: str | Path, queries: Sequence[str], top_k: int = 5) -> list[list[dict]]:
    """`lmforge index search`: per query, the top-k chunks with their scores."""
    index = Index.load(index_dir)
    hits = index.search(Embedder(index.model)(list(queries)), top_k)
    return [[{"score": h.score, **h.chunk} for h in row] for row in hits]


def verbalize_file(
    triples: str | Path,
    out: str | Path,
    templates: str | Path | None = None,
    by_entity: bool = True,
) -> int:
    """Write the verbalized triples as JSONL `{"text": ...}` (or plain text for a .txt `out`);
    returns the number of documents. The file is ready for `lmforge pretrain --data`."""
    graph = KnowledgeGraph.load(triples)
    tmpl = read_templates(templates) if templates is not None else None
    docs = verbalize_all(graph.triples, tmpl, by_entity)
    if Path(out).suffix.lower() == ".txt":
        text = "\n\n".join(docs) + "\n"
    else:
        text = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    atomic_write_text(out, text)
    return len(docs)
