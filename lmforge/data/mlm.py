"""BERT pretraining data: masked-LM corruption (80/10/10) and next-sentence-prediction pairs.

    documents -> sentences -> segments of ~(seq_len - 3) / 2 tokens (consecutive sentences packed)
    example   =  [CLS] A [SEP] B [SEP]    token types 0 ... 0 1 ... 1
                 B = the segment after A (label 0, IsNext) with probability 1/2,
                     else a segment of another document (label 1, NotNext)
    then 15% of the non-special tokens are selected for prediction (`mask_tokens`).

Batches are drawn by a generator keyed on (seed, step, micro-batch) like `TokenWindows`, so any
step's batch can be produced directly and a resume seeks instead of replaying.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lmforge.errors import DataError, TokenizerError
from lmforge.tokenizer import Tokenizer

#: Label of a position that is not predicted; the same value as `lmforge.objectives.lm.IGNORE`
#: (PyTorch's default `ignore_index`), repeated here because `data` does not import `objectives`.
IGNORE = -100
IS_NEXT, NOT_NEXT = 0, 1  # NSP labels, Hugging Face's convention
EVAL_KEY = 0x5EED_E7A1  # keys the evaluation generators apart from every training step's
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def mask_tokens(
    ids: Tensor,
    special_mask: Tensor,
    vocab_size: int,
    mask_id: int,
    generator: torch.Generator | None = None,
    prob: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """select ~ Bernoulli(prob) per non-special token; selected -> [MASK] 80% | random 10% |
    unchanged 10%; labels = the original id where selected, IGNORE elsewhere (BERT's MLM).

    Each token that is not special is selected with probability `prob` (15%). A selected token is
    replaced by [MASK] with probability 0.8, by a token drawn uniformly from the vocabulary with
    probability 0.1, and left unchanged with probability 0.1; the model must predict the original
    token at every selected position. Special tokens ([CLS], [SEP], padding) are never selected.

    Args:
        ids: (B, T) token ids.
        special_mask: (B, T) bool, True where a token must never be selected.
        vocab_size: random replacements are drawn from [0, vocab_size).
        mask_id: id of the [MASK] token.
        generator: a seeded `torch.Generator` (None = the global one).
        prob: selection probability.

    Returns:
        (inputs, labels): the corrupted ids, and the original id at selected positions, IGNORE
        everywhere else.
    """
    shape = ids.shape
    probs = torch.full(shape, prob, dtype=torch.float32)
    probs.masked_fill_(special_mask.to(torch.bool), 0.0)
    selected = torch.bernoulli(probs, generator=generator).to(torch.bool)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    draw = torch.rand(shape, generator=generator)  # one draw splits the selection 80/10/10
    to_mask = selected & (draw < 0.8)
    to_random = selected & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=ids.dtype)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def split_sentences(text: str) -> list[str]:
    """Paragraphs (split at blank lines, wrapped lines joined), then sentences at . ! ? 。！？."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        if flat:
            sentences.extend(s for s in _SENTENCE_END.split(flat) if s)
    return sentences


def pack_segments(sentences: Sequence[Sequence[int]], max_tokens: int) -> list[np.ndarray]:
    """Consecutive sentences packed greedily into segments of at most `max_tokens` ids; a
    sentence longer than that is cut into pieces of `max_tokens`."""
    segments: list[np.ndarray] = []
    current: list[int] = []
    for sentence in sentences:
        if current and len(current) + len(sentence) > max_tokens:
            segments.append(np.asarray(current, dtype=np.int64))
            current = []
        current.extend(sentence)
        while len(current) > max_tokens:
            segments.append(np.asarray(current[:max_tokens], dtype=np.int64))
            current = current[max_tokens:]
    if current:
        segments.append(np.asarray(current, dtype=np.int64))
    return segments


def segment_documents(
    tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int
) -> list[list[np.ndarray]]:
    """Each text -> its sentences -> token ids -> segments of about `max_tokens` ids."""
    per_doc = [split_sentences(text) for text in texts]
    flat = [s for sentences in per_doc for s in sentences]
    encoded = tokenizer.encode_batch(flat) if flat else []
    docs, at = [], 0
    for sentences in per_doc:
        ids = encoded[at : at + len(sentences)]
        at += len(sentences)
        segments = pack_segments([s for s in ids if s], max_tokens)
        if segments:
            docs.append(segments)
    return docs


class NSPPairs:
    """`[CLS] A [SEP] B [SEP]` examples with NSP labels and MLM corruption, seekable by step.

    Each batch holds `input_ids` (masked), `token_type_ids`, `attention_mask`, `labels` (MLM
    targets, IGNORE elsewhere) and `nsp_labels` (0 = IsNext, 1 = NotNext), padded with `pad_id`
    to the longest example of the batch.

    Args:
        documents: per document, its segments (token id arrays) in reading order.
        seq_len: longest example, special tokens included (longer pairs are trimmed).
        batch_size: examples per micro-batch.
        cls_id, sep_id, pad_id, mask_id: special token ids.
        vocab_size: range of the random replacement tokens.
        seed: keys every generator.
        mlm_prob: share of tokens selected for MLM (0 turns masking off).
        name: the split's name in error messages.
    """

    def __init__(
        self,
        documents: Sequence[Sequence[np.ndarray]],
        seq_len: int,
        batch_size: int,
        *,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        mask_id: int,
        vocab_size: int,
        seed: int = 0,
        mlm_prob: float = 0.15,
        name: str = "training",
    ) -> None:
        docs = [list(d) for d in documents if len(d)]
        self.segments = [np.asarray(s, dtype=np.int64) for d in docs for s in d]
        sizes = np.array([len(d) for d in docs], dtype=np.int64)
        self.doc_start = np.concatenate([[0], np.cumsum(sizes)])  # doc d = [start[d], start[d+1])
        self.doc_of = np.repeat(np.arange(len(docs)), sizes)
        # A may be any segment with a successor in its own document
        self.firsts = np.array(
            [i for i in range(len(self.segments)) if i + 1 < self.doc_start[self.doc_of[i] + 1]],
            dtype=np.int64,
        )
        if len(self.firsts) == 0:
            raise DataError(
                f"the {name} split has no document with two or more segments, so no next-sentence "
                "pair can be made; add longer documents or lower seq_len."
            )
        if len(docs) < 2 and sizes[0] < 3:
            raise DataError(
                f"the {name} split has one document of {sizes[0]} segments, too few for a random "
                "NotNext segment; add more text."
            )
        if seq_len < 5:
            raise DataError(f"seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]; raise it.")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = cls_id, sep_id, pad_id, mask_id
        self.vocab_size, self.mlm_prob = vocab_size, mlm_prob

    @classmethod
    def from_texts(
        cls, tokenizer: Tokenizer, texts: Sequence[str], seq_len: int, batch_size: int, **kwargs
    ) -> NSPPairs:
        """Segment `texts` with `tokenizer` (segments of (seq_len - 3) // 2 ids) and take its
        special ids: [CLS]/[SEP] (or BOS/EOS for a BPE tokenizer), [PAD] and [MASK]."""
        ids = special_ids(tokenizer)
        docs = segment_documents(tokenizer, texts, max(1, (seq_len - 3) // 2))
        return cls(docs, seq_len, batch_size, vocab_size=tokenizer.vocab_size, **ids, **kwargs)

    # ----------------------------------------------------------------- sampling
    def _partner(self, a: int, is_next: bool, rng: np.random.Generator) -> int:
        """The true next segment, or a random segment of another document (of the same one,
        away from A, when there is only one document)."""
        if is_next:
            return a + 1
        d = self.doc_of[a]
        lo, hi = self.doc_start[d], self.doc_start[d + 1]
        n_other = len(self.segments) - (hi - lo)
        if n_other > 0:  # draw among the other documents' segments, skipping doc d's range
            j = int(rng.integers(n_other))
            return j if j < lo else j + (hi - lo)
        j = int(rng.integers(len(self.segments) - 2))  # one document: skip A and A + 1
        return j if j < a else j + 2

    def _example(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        first, second = _trim_pair(self.segments[a], self.segments[b], self.seq_len - 3)
        ids = np.concatenate([[self.cls_id], first, [self.sep_id], second, [self.sep_id]]).astype(
            np.int64
        )
        types = np.zeros(len(ids), dtype=np.int64)
        types[len(first) + 2 :] = 1
        return ids, types

    def _collate(self, firsts: np.ndarray, rng: np.random.Generator) -> dict[str, Tensor]:
        is_next = rng.random(len(firsts)) < 0.5
        pairs = [
            self._example(int(a), self._partner(int(a), bool(n), rng))
            for a, n in zip(firsts, is_next, strict=True)
        ]
        width = max(len(ids) for ids, _ in pairs)
        ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(pairs), width), dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (x, t) in enumerate(pairs):
            ids[row, : len(x)] = torch.from_numpy(x)
            types[row, : len(t)] = torch.from_numpy(t)
            mask[row, : len(x)] = 1
        special = (mask == 0) | (ids == self.cls_id) | (ids == self.sep_id)
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        inputs, labels = mask_tokens(
            ids, special, self.vocab_size, self.mask_id, gen, prob=self.mlm_prob
        )
        nsp = torch.from_numpy(np.where(is_next, IS_NEXT, NOT_NEXT).astype(np.int64))
        return {
            "input_ids": inputs,
            "token_type_ids": types,
            "attention_mask": mask,
            "labels": labels,
            "nsp_labels": nsp,
        }

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """This rank's share of a step's micro-batch.

        The global micro-batch (batch_size * world examples: A segments, IsNext coins, partners
        and masks) comes from a generator seeded by (seed, step, micro), so every run and every
        resume sees the same data and N ranks together see what one process would.
        """
        rng = np.random.default_rng([self.seed, step, micro])
        firsts = self.firsts[rng.integers(0, len(self.firsts), size=self.batch_size * world)]
        full = self._collate(firsts, rng)
        rows = slice(rank * self.batch_size, (rank + 1) * self.batch_size)
        width = int(full["attention_mask"][rows].sum(-1).max())
        return {k: v[rows, :width] if v.dim() == 2 else v[rows] for k, v in full.items()}

    def sequential(self, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every A segment in order, `batch_size` at a time, with fixed coins and masks (eval)."""
        for i, at in enumerate(range(0, len(self.firsts), self.batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            rng = np.random.default_rng([self.seed, EVAL_KEY, i])
            yield self._collate(self.firsts[at : at + self.batch_size], rng)


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """cls/sep/pad/mask ids of a tokenizer; BOS/EOS stand in for [CLS]/[SEP] (as in RoBERTa)."""
    ids = {
        "cls_id": tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id,
        "sep_id": tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "mask_id": tokenizer.mask_id,
    }
    missing = [k[:-3] for k, v in ids.items() if v is None]
    if missing:
        raise TokenizerError(
            f"masked-LM pairs need {', '.join(missing)} token(s) the tokenizer lacks; train one "
            "with kind='wordpiece' (it has [CLS] [SEP] [PAD] [MASK])."
        )
    return ids


def _trim_pair(a: np.ndarray, b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens from the end of the longer segment until len(a) + len(b) <= budget."""
    la, lb = len(a), len(b)
    while la + lb > budget:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return a[:la], b[:lb]
