"""Sentence embeddings: mean-pooled, L2-normalised last hidden states (sentence-transformers style).

For a text with tokens t = 1..T (special tokens included, padding excluded) and last hidden
states h_t of the encoder (of the decoder for a decoder-only model):

    e = (1/T) sum_t h_t,      e_hat = e / ||e||_2

so the cosine similarity of two texts is the dot product e_hat_a . e_hat_b.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, TokenizerError
from lmforge.models import Transformer
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.tokenizer import Tokenizer


def max_tokens(model: Transformer, tokenizer: Tokenizer, max_length: int | None = None) -> int:
    """The longest input: `max_length`, else the smaller of the model's and tokenizer's limits."""
    limit = min(model.cfg.max_seq_len, tokenizer.model_max_length or model.cfg.max_seq_len)
    if max_length is not None:
        if max_length < 1:
            raise ConfigError(f"max_length must be at least 1, got {max_length}.")
        limit = min(limit, max_length)
    return limit


def sentence_max_length(model_dir: str | Path) -> int | None:
    """`max_seq_length` from a sentence-transformers `sentence_bert_config.json`, if any."""
    path = Path(model_dir) / "sentence_bert_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Ids with the tokenizer's markers ([CLS] ... [SEP]), truncated to `max_length` in total.

    Padding happens once, per batch, with an attention mask (`Tokenizer.load` switches off any
    padding a Hugging Face `tokenizer.json` carries).
    """
    backend = tokenizer.backend
    backend.enable_truncation(max_length)
    return tokenizer.encode_batch(texts, add_special_tokens=True)


def pad_batch(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row: (ids, attention mask), both (B, T) int64."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def last_hidden(model: Transformer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) last hidden states: the encoder's, or the decoder's for a decoder-only model."""
    if model.cfg.arch == "decoder":
        return model(ids, attention_mask=mask).hidden
    return model.encode(ids, attention_mask=mask).hidden


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): e = sum_t m_t h_t / sum_t m_t (padding has m_t = 0)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Embedder:
    """A loaded embedding model: `embedder(texts)` -> (N, d) embeddings (see `embed`).

    Loads the model once, for callers that embed many times (an index, a retriever, a linker).
    """

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 32,
        normalize: bool = True,
        max_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.model_dir, self.batch_size, self.normalize = model_dir, batch_size, normalize
        self.model, self.tokenizer = load_model_and_tokenizer(model_dir)
        if max_length is None:
            max_length = sentence_max_length(model_dir)
        self.max_length = max_tokens(self.model, self.tokenizer, max_length)

    @torch.inference_mode()
    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        model, tokenizer = self.model, self.tokenizer
        if not texts:
            return torch.zeros(0, model.cfg.d_model)
        if tokenizer.pad_id is None and tokenizer.eos_id is None and len(texts) > 1:
            raise TokenizerError(
                "the tokenizer has neither a pad nor an eos token to pad batches with; "
                "add pad_token to tokenizer_config.json or pass batch_size=1."
            )
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
        ids = encode_texts(tokenizer, texts, self.max_length)
        out = []
        for start in range(0, len(ids), self.batch_size):
            batch, mask = pad_batch(ids[start : start + self.batch_size], pad_id)
            pooled = mean_pool(last_hidden(model, batch, mask).float(), mask)
            out.append(F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled)
        return torch.cat(out).cpu()


def embed(
    model_dir: str | Path,
    texts: str | Sequence[str],
    batch_size: int = 32,
    normalize: bool = True,
    max_length: int | None = None,
) -> torch.Tensor:
    """Embed texts with the model in `model_dir` (e.g. an imported all-MiniLM-L6-v2).

    Args:
        model_dir: an lmforge model dir with its tokenizer.
        texts: one text or a list of texts.
        batch_size: texts per forward pass.
        normalize: divide each embedding by its L2 norm (cosine similarity = dot product).
        max_length: truncate each text to this many tokens, special tokens included
            (default: `max_seq_length` of the dir's `sentence_bert_config.json` when there is
            one, as sentence-transformers does, else the model's and tokenizer's limit).

    Returns:
        (len(texts), d_model) float32 tensor on the CPU.
    """
    return Embedder(model_dir, batch_size, normalize, max_length)(texts)


def cosine_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, N) cosine similarities cos(a, b) = a.b / (||a|| ||b||)."""
    unit = F.normalize(embeddings, p=2, dim=-1)
    return unit @ unit.T
