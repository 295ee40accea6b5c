"""`lmforge knowledge ...`, `lmforge index ...` and `lmforge augment`: knowledge graphs,
embedding indexes for retrieval, and text data augmentation. `register(app)` adds the verbs.

`RetrieveOpt`, `RetrieveKOpt`, `KgOpt`, `KgTemplatesOpt` and `prompt_transform` are shared by `generate`, `chat` and
`serve`, which take `--retrieve idx/ --retrieve-k K` or `--kg triples.tsv`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

knowledge_app = typer.Typer(help="Knowledge graphs: verbalize triples, link entities.",
                            no_args_is_help=True)  # fmt: skip
index_app = typer.Typer(help="Embedding indexes for retrieval.", no_args_is_help=True)

RetrieveOpt = Annotated[
    Path | None,
    typer.Option(help="An index dir (`lmforge index build`): put the top-k chunks in the prompt."),
]
RetrieveKOpt = Annotated[
    int, typer.Option(help="Chunks --retrieve puts in the prompt (--top-k is sampling's).")
]
TopKOpt = Annotated[int, typer.Option(help="Chunks returned per query.")]
KgOpt = Annotated[
    Path | None,
    typer.Option(help="A triple file (.tsv/.jsonl): put the linked entities' facts in the prompt."),
]
AliasesOpt = Annotated[Path | None, typer.Option(help="Entity aliases (.jsonl).")]
KgTemplatesOpt = Annotated[
    Path | None, typer.Option(help="With --kg: JSON {relation: 'The capital of {head} is {tail}.'}")
]


def prompt_transform(
    retrieve: Path | None,
    top_k: int,
    kg: Path | None,
    templates: Path | None = None,
    aliases: Path | None = None,
):
    """The prompt transform the options ask for, or None."""
    from lmforge.errors import ConfigError

    if templates is not None and kg is None:
        raise ConfigError("--kg-templates goes with --kg TRIPLES; add --kg.")
    if retrieve is not None and kg is not None:
        raise ConfigError("pass --retrieve or --kg, not both.")
    if retrieve is not None:
        from lmforge.recipes.knowledge import load_retriever

        return load_retriever(retrieve, top_k)
    if kg is not None:
        from lmforge.recipes.knowledge import load_kg

        return load_kg(kg, aliases, templates)
    return None


@knowledge_app.command("verbalize")
def verbalize(
    triples: Annotated[
        Path, typer.Argument(help="Triples: .tsv (head, relation, tail) or .jsonl.")
    ],
    out: Annotated[Path, typer.Option(help="Output .jsonl ({'text': ...}) or .txt.")],
    templates: Annotated[
        Path | None, typer.Option(help="JSON {relation: 'The capital of {head} is {tail}.'}")
    ] = None,
    per_triple: Annotated[
        bool, typer.Option(help="One document per triple (default: one per head entity).")
    ] = False,
) -> None:
    """Turn triples into sentences for continued pretraining (`pretrain --init M --data OUT`)."""
    from lmforge.recipes.knowledge import verbalize_file

    n = verbalize_file(triples, out, templates, by_entity=not per_triple)
    typer.echo(f"wrote {n} documents to {out}")


@knowledge_app.command("link")
def link(
    triples: Annotated[Path, typer.Argument(help="Triples: .tsv or .jsonl.")],
    text: Annotated[str, typer.Argument(help="Text to find entities in.")],
    aliases: AliasesOpt = None,
    embed_model: Annotated[
        Path | None, typer.Option(help="Embedding model dir for the similarity stage.")
    ] = None,
    threshold: Annotated[float, typer.Option(help="Lowest cosine that links.")] = 0.6,
) -> None:
    """Show the entities a text mentions and the prompt their facts make."""
    from lmforge.knowledge import EntityLinker, KnowledgeGraph
    from lmforge.recipes.embed import Embedder

    graph = KnowledgeGraph.load(triples, aliases)
    linker = EntityLinker(graph, Embedder(embed_model) if embed_model else None, threshold)
    for found in linker.link(text):
        typer.echo(f"{text[found.start : found.end]!r} -> {found.entity} "
                   f"({found.how}, {found.score:.3f})")  # fmt: skip


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Embedding model dir (e.g. imported MiniLM).")],
    data: Annotated[list[Path], typer.Option(help="Documents: file or folder; repeat for more.")],
    out: Annotated[Path, typer.Option(help="Index dir to write.")],
    chunk_words: Annotated[int, typer.Option(help="Words per chunk.")] = 200,
    overlap: Annotated[int, typer.Option(help="Words shared by neighbouring chunks.")] = 40,
    batch_size: Annotated[int, typer.Option(help="Chunks per forward pass.")] = 64,
) -> None:
    """Chunk documents, embed the chunks and write an index (safetensors + chunks.jsonl)."""
    from lmforge.recipes.knowledge import build_index_from_dir

    index = build_index_from_dir(model, data, out, chunk_words, overlap, batch_size)
    typer.echo(f"indexed {len(index.chunks)} chunks ({index.embeddings.size(1)} dims) in {out}")


@index_app.command("search")
def index_search(
    index: Annotated[Path, typer.Argument(help="Index dir.")],
    query: Annotated[list[str], typer.Argument(help="One or more queries.")],
    top_k: TopKOpt = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per query.")] = False,
) -> None:
    """The chunks nearest to each query by cosine similarity (exact search)."""
    from lmforge.knowledge.index import origin
    from lmforge.recipes.knowledge import search_index

    for q, hits in zip(query, search_index(index, query, top_k), strict=True):
        if as_json:
            typer.echo(json.dumps({"query": q, "hits": hits}, ensure_ascii=False))
            continue
        typer.echo(f"query: {q}")
        for rank, h in enumerate(hits, 1):
            snippet = h["text"] if len(h["text"]) <= 100 else h["text"][:97] + "..."
            typer.echo(f"  {rank}. {h['score']:.3f} {origin(h)}: {snippet}")


def augment(
    data: Annotated[Path, typer.Argument(help="Classification file (text, label): .csv/.jsonl.")],
    out: Annotated[Path, typer.Option(help="Output .jsonl: the rows, then their copies.")],
    n: Annotated[int, typer.Option(help="Augmented copies per row.")] = 2,
    ops: Annotated[
        str, typer.Option(help="Comma-separated: swap, delete, insert, synonym, context.")
    ] = "swap,delete,insert,synonym",
    alpha: Annotated[float, typer.Option(help="Share of words each operation changes.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same copies).")] = 0,
    model: Annotated[
        Path | None, typer.Option(help="Model dir whose embedding neighbours are synonyms.")
    ] = None,
    fill_mask_model: Annotated[
        Path | None, typer.Option(help="BERT-family model dir with an MLM head, for 'context'.")
    ] = None,
) -> None:
    """Write a classification file with augmented copies of each row (labels kept)."""
    from lmforge.recipes.augment import augment_file

    rows = augment_file(data, out, n, ops=ops.split(","), alpha=alpha, seed=seed, model=model,
                        fill_mask_model=fill_mask_model)  # fmt: skip
    typer.echo(f"wrote {rows} rows ({n} copies per row added) to {out}")


def finetune_embed(model_dir, train, out, valid, test, epochs, max_len, overrides) -> None:
    """`lmforge finetune --task embed`: `temperature=`, `loss=` (infonce, negative-sampling) and
    `corpus=PATH` (extra retrieval documents) ride along with the key=value train settings."""
    from lmforge.config.train import parse_overrides
    from lmforge.recipes.finetune_embed import finetune_embed as run

    values = parse_overrides(overrides or [])
    options = {k: values.pop(k) for k in ("temperature", "loss", "corpus") if k in values}
    r = run(model_dir, train, out, valid=valid, test=test, epochs=epochs,
            max_len=max_len or 128, overrides=values, **options)  # fmt: skip
    for when in ("before", "after"):
        for split, scores in r.metrics[when].items():
            numbers = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            typer.echo(f"{split} {when}: {numbers}")
    typer.echo(f"{r.train.steps} steps; model in {r.out_dir} (metrics.json)")


def register(app: typer.Typer) -> None:
    """Add `knowledge`, `index` and `augment` to the main `lmforge` app."""
    app.add_typer(knowledge_app, name="knowledge")
    app.add_typer(index_app, name="index")
    app.command("augment")(augment)
