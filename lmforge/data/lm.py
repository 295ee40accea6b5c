"""Language-modelling data: documents -> one token stream -> batches of windows.

Training batches are drawn by a generator keyed on (seed, step, micro-batch), so any step's batch
can be produced directly: resuming at step N seeks, it never replays N steps of data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from lmforge.errors import DataError


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokens_from_documents(tokenizer, documents: Sequence[str]) -> np.ndarray:
    """Encode documents and join them into one stream: [BOS] doc [EOS] [BOS] doc [EOS] ...

    (BOS/EOS where the tokenizer has them.) Generation starts a prompt with BOS the same way.
    """
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    ids: list[int] = []
    for doc_ids in tokenizer.encode_batch(list(documents)):
        if bos is not None:
            ids.append(bos)
        ids.extend(doc_ids)
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=token_dtype(tokenizer.vocab_size))


class TokenWindows:
    """Windows of `seq_len + 1` tokens from a 1-D token array (in memory or memory-mapped).

    A window w gives input_ids = w[:-1] and labels = w[1:] (next-token prediction).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        name: str = "training",
    ) -> None:
        if len(tokens) < seq_len + 2:
            raise DataError(
                f"the {name} split has {len(tokens)} tokens, fewer than one window of "
                f"seq_len+1={seq_len + 1}; add more text or lower seq_len."
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed

    def _stack(self, starts: np.ndarray) -> dict[str, torch.Tensor]:
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]  # (B, T+1)
        w = torch.from_numpy(self.tokens[idx].astype(np.int64))
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}

    def batch(
        self, step: int, micro: int = 0, rank: int = 0, world: int = 1
    ) -> dict[str, torch.Tensor]:
        """This rank's share of a step's micro-batch.

        The global micro-batch (batch_size * world windows) is drawn from a generator seeded by
        (seed, step, micro), so it is the same on every run and every resume (a resume seeks, it
        does not replay), and N ranks together see exactly what one process would.
        """
        rng = np.random.default_rng([self.seed, step, micro])
        high = len(self.tokens) - self.seq_len - 1
        starts = rng.integers(0, high, size=self.batch_size * world)
        return self._stack(starts[rank * self.batch_size : (rank + 1) * self.batch_size])

    def sequential(self, max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Non-overlapping windows from the start (evaluation), `batch_size` at a time."""
        n_windows = (len(self.tokens) - 1) // self.seq_len
        starts = np.arange(n_windows) * self.seq_len
        for i, at in enumerate(range(0, n_windows, self.batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self._stack(starts[at : at + self.batch_size])


def unigram_perplexity(
    train_tokens: np.ndarray, valid_tokens: np.ndarray, vocab_size: int
) -> float:
    """exp(-mean log p(x)) of the held-out tokens under add-one smoothed train frequencies:
    the perplexity of a model that ignores context, the baseline a language model must beat."""
    counts = (
        np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    )
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[valid_tokens.astype(np.int64)].mean()))
