"""Encoded fine-tuning examples and their batches (records come from `lmforge.data.tasks`).

A text longer than the model allows is cut, never silently: one warning per split counts the cut
examples ("12 of 800 training examples were longer than 128 tokens and were truncated").

Batches are seekable like every lmforge batcher: micro-batch m = step * grad_accum + micro covers
positions q in [m * B * world, (m + 1) * B * world), and position q is example
perm_{(seed, epoch)}[q mod N] with epoch = q // N, so each epoch visits every example once in its
own shuffled order, and a resume computes its batches directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lmforge.data.mlm import IGNORE
from lmforge.data.tasks import Features, Record
from lmforge.errors import DataError


class TruncationWarning(UserWarning):
    """Some examples were longer than the model allows and were cut."""


# --------------------------------------------------------------------------- encoding
def markers(tokenizer) -> tuple[int | None, int | None]:
    """(start, separator): [CLS]/[SEP], or BOS/EOS for a tokenizer without them."""
    start = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    return start, sep


def _wrap(
    start: int | None, parts: list[list[int]], sep: int | None
) -> tuple[list[int], list[int]]:
    """[start] part_0 [sep] part_1 [sep] ...; token types 0 up to the first [sep], then 1."""
    ids = [start] if start is not None else []
    types = [0] * len(ids)
    for segment, part in enumerate(parts):
        piece = part + ([sep] if sep is not None else [])
        ids += piece
        types += [segment] * len(piece)
    return ids, types


def _budget(lengths: list[int], budget: int) -> list[int]:
    """Shorten the longest part, one token at a time, until the parts fit `budget` in total."""
    lengths = list(lengths)
    while sum(lengths) > max(budget, 0):
        lengths[lengths.index(max(lengths))] -= 1
    return lengths


def encode_classify(tokenizer, records, label_ids, max_len: int) -> tuple[list[Features], int]:
    """Features {"input_ids", "token_type_ids", "labels" (int)} and the number of cut texts."""
    start, sep = markers(tokenizer)
    texts = tokenizer.encode_batch([r["text"] for r in records])
    pairs = [r["text_pair"] for r in records]
    pair_ids = iter(tokenizer.encode_batch([p for p in pairs if p is not None]))
    out, cut = [], 0
    for text, pair, record in zip(texts, pairs, records, strict=True):
        parts = [text] if pair is None else [text, next(pair_ids)]
        n_special = (start is not None) + len(parts) * (sep is not None)
        lengths = _budget([len(p) for p in parts], max_len - n_special)
        cut += lengths != [len(p) for p in parts]
        ids, types = _wrap(start, [p[:n] for p, n in zip(parts, lengths, strict=True)], sep)
        out.append(
            {"input_ids": ids, "token_type_ids": types, "labels": label_ids[record["label"]]}
        )
    return out, cut


def encode_tokens(tokenizer, records, tag_ids, max_len: int) -> tuple[list[Features], int]:
    """Features {"input_ids", "labels" (per piece: a word's tag id on its first piece, IGNORE
    elsewhere)}; words past the limit are dropped (their examples counted as cut)."""
    start, sep = markers(tokenizer)
    budget = max_len - (start is not None) - (sep is not None)
    words = [r["tokens"] for r in records]
    if tokenizer.kind == "bpe":  # byte-level BPE marks a word start by a leading space
        words = [[w[0]] + [" " + x for x in w[1:]] for w in words]
    encodings = tokenizer.backend.encode_batch(
        words, is_pretokenized=True, add_special_tokens=False
    )
    out, cut = [], 0
    for record, enc in zip(records, encodings, strict=True):
        ids, word_of = enc.ids[:budget], enc.word_ids[:budget]
        labels, seen = [], set()
        for w in word_of:
            first = w is not None and w not in seen
            labels.append(tag_ids[record["tags"][w]] if first else IGNORE)
            seen.add(w)
        cut += len(seen) < len(record["tokens"])
        full, _ = _wrap(start, [ids], sep)
        lead = [IGNORE] if start is not None else []
        out.append({"input_ids": full, "labels": lead + labels + [IGNORE] * (sep is not None)})
    return out, cut


def sft_segments(tokenizer, record: Record) -> list[tuple[list[int], bool]]:
    """(ids, trained) segments of one SFT example; see `lmforge.data.tasks` for the layout.

    prompt/response:  [BOS] prompt | response [EOS]        (BOS, else EOS, starts a document,
                                                           as `lmforge generate` starts a prompt)
    messages:         the chat template (`lmforge.tokenizer.render_chat`): for each assistant
                      message, the rendering of the conversation before it with an open assistant
                      turn is the (untrained) prompt and its content is trained; EOS ends the
                      last reply. A template whose renderings do not nest trains the last reply.
    """
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    if "messages" not in record:
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        prompt = ([start] if start is not None else []) + tokenizer.encode(record["prompt"])
        return [(prompt, False), (tokenizer.encode(record["response"]) + eos, True)]
    from lmforge.tokenizer.chat import render_chat

    messages = record["messages"]
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k in turns:
        prompt = render_chat(tokenizer, messages[:k], add_generation_prompt=True)
        if not prompt.startswith(done):  # renderings do not nest: train the last reply only
            pieces, done = [], ""
        pieces += [(prompt[len(done) :], False), (messages[k]["content"], True)]
        done = prompt + messages[k]["content"]
    segments = [(tokenizer.encode(text), trained) for text, trained in pieces if text]
    segments[-1] = (segments[-1][0] + eos, True)
    return segments


def encode_sft(tokenizer, records, max_len: int) -> tuple[list[Features], int]:
    """Causal-LM features {"input_ids" = ids[:-1], "labels" = ids[1:] where trained else IGNORE}
    cut to `max_len` inputs; an example whose response is cut away entirely is left out."""
    out, cut = [], 0
    for record in records:
        ids: list[int] = []
        trained: list[bool] = []
        for seg, is_trained in sft_segments(tokenizer, record):
            ids += seg
            trained += [is_trained] * len(seg)
        cut += len(ids) > max_len + 1
        ids, trained = ids[: max_len + 1], trained[: max_len + 1]
        labels = [i if t else IGNORE for i, t in zip(ids[1:], trained[1:], strict=True)]
        if any(label != IGNORE for label in labels):
            out.append({"input_ids": ids[:-1], "labels": labels})
    return out, cut


def encode_seq2seq(tokenizer, records, max_len: int) -> tuple[list[Features], int]:
    """Features {"source", "target"} (ids without EOS, each cut to max_len - 1)."""
    sources = tokenizer.encode_batch([r["source"] for r in records])
    targets = tokenizer.encode_batch([r["target"] for r in records])
    keep = max_len - 1
    cut = sum(len(s) > keep or len(t) > keep for s, t in zip(sources, targets, strict=True))
    return [
        {"source": s[:keep], "target": t[:keep]} for s, t in zip(sources, targets, strict=True)
    ], cut


def encode(
    task: str,
    tokenizer,
    records,
    label_ids: dict[str, int],
    max_len: int,
    split: str,
    warn: bool = True,
    doc_stride: int = 128,
) -> list[Features]:
    """Encode one split for `task` and warn (once, with the count) about cut examples.

    qa gives `lmforge.data.qa.QAWindow`s (several per long context, nothing cut; `doc_stride`
    tokens shared by consecutive windows); choice gives {"options", "labels"}."""
    if task == "qa":
        from lmforge.data.qa import qa_windows

        return qa_windows(tokenizer, records, max_len, doc_stride)  # type: ignore[return-value]
    if task == "choice":
        from lmforge.data.choice import encode_choice

        features, cut = encode_choice(tokenizer, records, max_len)
    elif task == "classify":
        features, cut = encode_classify(tokenizer, records, label_ids, max_len)
    elif task == "tokens":
        features, cut = encode_tokens(tokenizer, records, label_ids, max_len)
    elif task == "sft":
        features, cut = encode_sft(tokenizer, records, max_len)
    else:
        features, cut = encode_seq2seq(tokenizer, records, max_len)
    if warn:
        warn_truncated(cut, len(records), max_len, split)
    if warn and task == "sft" and len(features) < len(records):
        warnings.warn(
            f"{len(records) - len(features)} of {len(records)} {split} examples kept no response "
            f"token within {max_len} tokens and were left out.",
            TruncationWarning,
            stacklevel=2,
        )
    return features


def warn_truncated(cut: int, total: int, max_len: int, split: str) -> None:
    """One warning line with the count, when any example was cut."""
    if cut:
        warnings.warn(
            f"{cut} of {total} {split} examples were longer than {max_len} tokens and were "
            "truncated.",
            TruncationWarning,
            stacklevel=4,
        )


# --------------------------------------------------------------------------- batching
def pad_features(features: Sequence[Features], pad_id: int) -> dict[str, Tensor]:
    """Right-pad `input_ids` (pad_id), `token_type_ids` (0) and sequence `labels` (IGNORE) to the
    longest example; `attention_mask` is 1 on tokens, 0 on padding; integer labels stack."""
    width = max(len(f["input_ids"]) for f in features)
    n = len(features)
    batch = {
        "input_ids": torch.full((n, width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, width), dtype=torch.long),
    }
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = torch.zeros((n, width), dtype=torch.long)
    seq_labels = not isinstance(features[0]["labels"], int)
    if seq_labels:
        batch["labels"] = torch.full((n, width), IGNORE, dtype=torch.long)
    for row, f in enumerate(features):
        t = len(f["input_ids"])
        batch["input_ids"][row, :t] = torch.tensor(f["input_ids"], dtype=torch.long)
        batch["attention_mask"][row, :t] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][row, :t] = torch.tensor(f["token_type_ids"], dtype=torch.long)
        if seq_labels:
            batch["labels"][row, :t] = torch.tensor(f["labels"], dtype=torch.long)
    if not seq_labels:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


def collate_fn(
    task: str, pad_id: int, eos_id: int | None = None, decoder_start_id: int | None = None
) -> Callable[[Sequence[Features]], dict[str, Tensor]]:
    """The collate function of a task: `pad_features`, or the encoder-decoder layout of
    `lmforge.data.seq2seq.collate` for seq2seq."""
    if task == "qa":
        from lmforge.data.qa import qa_collate

        return lambda features: qa_collate(features, pad_id)
    if task == "choice":
        from lmforge.data.choice import choice_collate

        return lambda features: choice_collate(features, pad_id)
    if task != "seq2seq":
        return lambda features: pad_features(features, pad_id)
    from lmforge.data.seq2seq import collate

    if eos_id is None or decoder_start_id is None:
        raise DataError("seq2seq batches need the model's eos_id and decoder_start_id.")
    return lambda features: collate(
        [(f["source"], f["target"]) for f in features], eos_id, pad_id, decoder_start_id
    )


class TaskBatches:
    """Padded batches of encoded examples, epoch by epoch in a seeded shuffled order.

    Args:
        features: one encoded example each (see the `encode_*` functions).
        collate: features -> batch of tensors (padding, attention masks).
        batch_size: examples per micro-batch and rank.
        grad_accum: micro-batches per optimizer step (to number micro-batches consecutively).
        seed: keys the order of every epoch.
        name: the split's name in error messages.
    """

    def __init__(
        self,
        features: Sequence[Features],
        collate: Callable[[Sequence[Features]], dict[str, Tensor]],
        batch_size: int,
        *,
        grad_accum: int = 1,
        seed: int = 0,
        name: str = "training",
    ) -> None:
        if not features:
            raise DataError(f"the {name} split has no usable examples; add more.")
        self.features, self.collate = list(features), collate
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.features)

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(len(self.features)))
        return self._perm[1]

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """This rank's share of micro-batch m = step * grad_accum + micro (see the module
        docstring): the same on every run, every resume and every number of ranks."""
        size = self.batch_size * world
        first = (step * self.grad_accum + micro) * size + rank * self.batch_size
        n = len(self.features)
        picked = [
            self.features[int(self._order(q // n)[q % n])]
            for q in range(first, first + self.batch_size)
        ]
        return self.collate(picked)

    def sequential(self, batch_size: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every example once, in file order (evaluation and prediction)."""
        size = batch_size or self.batch_size
        for at in range(0, len(self.features), size):
            yield self.collate(self.features[at : at + size])
