"""An embedding index of text chunks with exact (brute-force) search.

Layout of an index dir:

    index.json               {"model": EMBED_MODEL_DIR, "dim": d, "chunks": N, "chunk_words": W,
                              "overlap": O, "format": 1}
    embeddings.safetensors   "embeddings": (N, d) float32, each row L2-normalised
    chunks.jsonl             {"id": i, "source": path, "doc": j, "chunk": c, "text": ...} per row

Chunking: a document's words w_0..w_{n-1} become windows of W words starting every W - O words,
[w_0..w_{W-1}], [w_{W-O}..w_{2W-O-1}], ..., so a fact cut by one boundary is whole in the
neighbouring chunk; the last window ends at w_{n-1}.

Search: for unit query q and chunk vectors e_i, score_i = cos(q, e_i) = q . e_i; the top k by
score, for a batch of queries one matmul S = Q E^T (B, N) then `topk`.

Why exact search: at N = 1M chunks and d = 384 (all-MiniLM-L6-v2) the matrix is
1M x 384 x 4 bytes = 1.54 GB in float32 (0.77 GB in float16). One query is 384M multiply-adds
(0.77 GFLOP); a CPU core does ~50 GFLOP/s in a matmul, but the scan is memory-bound: reading
1.54 GB at ~10-20 GB/s takes ~80-150 ms per query, or per batch of queries, since a batch of B
queries reads the matrix once (B = 32 costs ~the same time as 1). That is fast enough for
interactive RAG and for evaluation in batches; an ANN library (FAISS HNSW/IVF, ~1 ms per query)
pays off only beyond ~10M chunks or for many queries per second, at the cost of recall < 1. The
figures measured on this project's shared CPU are in BENCHMARKS.md (`bench/index_search.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmforge.data.sources import data_files, file_documents
from lmforge.errors import ConfigError, DataError

EmbedFn = Callable[[Sequence[str]], torch.Tensor]
FORMAT = 1


def chunk_words(text: str, size: int = 200, overlap: int = 40) -> list[str]:
    """Windows of `size` words that start every `size - overlap` words (see the module doc)."""
    if size < 1 or not 0 <= overlap < size:
        raise ConfigError(
            f"chunking needs size >= 1 and 0 <= overlap < size, got size={size}, "
            f"overlap={overlap}; lower --overlap or raise --chunk-words."
        )
    words = text.split()
    if not words:
        return []
    step = size - overlap
    out = []
    for start in range(0, len(words), step):
        out.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return out


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk and its cosine similarity to the query."""

    score: float
    chunk: dict  # id, source, doc, chunk, text


def exact_top_k(
    queries: torch.Tensor, keys: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, d), (N, d) unit vectors -> top-k (scores, indices), each (B, min(k, N)).

    S = Q K^T in one matmul, then `torch.topk` along N (ties: the lower index first).
    """
    k = min(k, keys.size(0))
    scores = queries.float() @ keys.float().T  # (B, N)
    return torch.topk(scores, k, dim=-1, sorted=True)


def reference_top_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> list[list[int]]:
    """The plain formula: score every key by a Python dot product, sort, keep k (for tests)."""
    out = []
    for q in queries.tolist():
        scores = [sum(a * b for a, b in zip(q, key, strict=True)) for key in keys.tolist()]
        out.append(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])
    return out


def origin(chunk: dict) -> str:
    """Where a chunk comes from, for citations: "docs/a.jsonl:12#0" (file:document#chunk)."""
    return f"{chunk['source']}:{chunk['doc']}#{chunk['chunk']}"


class Index:
    """A loaded index dir: `search(query_vectors, k)` returns hits per query."""

    def __init__(self, embeddings: torch.Tensor, chunks: list[dict], info: dict) -> None:
        self.embeddings, self.chunks, self.info = embeddings, chunks, info

    @property
    def model(self) -> str:
        """The embedding model dir the index was built with (queries must use the same)."""
        return self.info["model"]

    @classmethod
    def load(cls, path: str | Path) -> Index:
        """Read an index dir written by `build_index`."""
        path = Path(path)
        files = [path / n for n in ("index.json", "embeddings.safetensors", "chunks.jsonl")]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"{path} is not an index dir (missing {', '.join(missing)}); build one with "
                "`lmforge index build --model EMBED_MODEL --data DOCS --out DIR`."
            )
        info = json.loads(files[0].read_text(encoding="utf-8"))
        embeddings = load_file(str(files[1]))["embeddings"]
        lines = files[2].read_text(encoding="utf-8").splitlines()
        chunks = [json.loads(line) for line in lines if line.strip()]
        if len(chunks) != embeddings.size(0):
            raise DataError(
                f"{path} has {embeddings.size(0)} embeddings but {len(chunks)} chunks; rebuild "
                "the index."
            )
        return cls(embeddings, chunks, info)

    def search(self, queries: torch.Tensor, k: int = 5) -> list[list[Hit]]:
        """The k chunks nearest to each query vector (B, d) by cosine similarity."""
        if k < 1:
            raise ConfigError(f"top-k must be at least 1, got {k}.")
        if queries.dim() == 1:
            queries = queries.unsqueeze(0)
        if queries.size(-1) != self.embeddings.size(-1):
            raise ConfigError(
                f"the query vectors have {queries.size(-1)} dimensions but the index has "
                f"{self.embeddings.size(-1)}; embed queries with the index's model ({self.model})."
            )
        scores, ids = exact_top_k(F.normalize(queries.float(), dim=-1), self.embeddings, k)
        return [[Hit(float(s), self.chunks[int(i)]) for s, i in zip(row_s, row_i, strict=True)]
                for row_s, row_i in zip(scores, ids, strict=True)]  # fmt: skip


def build_index(
    embed: EmbedFn,
    data: Sequence[str | Path],
    out_dir: str | Path,
    *,
    model: str,
    chunk_size: int = 200,
    overlap: int = 40,
    batch_size: int = 64,
) -> Index:
    """Chunk the documents under `data`, embed the chunks and write an index dir atomically.

    Args:
        embed: texts -> (N, d) embeddings (normalised here).
        data: .txt/.md/.jsonl/.json files or folders (as `lmforge pretrain --data`).
        out_dir: the index dir; written in a temporary dir beside it, then renamed into place.
        model: the embedding model dir, recorded so that queries use the same model.
        chunk_size, overlap: words per chunk and words shared by neighbouring chunks.
        batch_size: chunks embedded per call of `embed`.
    """
    chunks: list[dict] = []
    for file in data_files(data):
        for j, doc in enumerate(file_documents(file)):
            for c, text in enumerate(chunk_words(doc, chunk_size, overlap)):
                chunks.append({"id": len(chunks), "source": str(file), "doc": j, "chunk": c,
                               "text": text})  # fmt: skip
    if not chunks:
        raise DataError(f"no text found in {', '.join(map(str, data))}; add documents.")
    vectors = [embed([c["text"] for c in chunks[s : s + batch_size]])
               for s in range(0, len(chunks), batch_size)]  # fmt: skip
    embeddings = F.normalize(torch.cat(vectors).float(), dim=-1).contiguous()
    info = {"format": FORMAT, "model": str(model), "dim": embeddings.size(1),
            "chunks": len(chunks), "chunk_words": chunk_size, "overlap": overlap}  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file({"embeddings": embeddings}, str(tmp / "embeddings.safetensors"))
        lines = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks)
        (tmp / "chunks.jsonl").write_text(lines, encoding="utf-8")
        (tmp / "index.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return Index(embeddings, chunks, info)
