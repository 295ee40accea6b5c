"""Encoder-decoder data: (source, target) pairs from JSONL, and T5-style span corruption of text.

Every example becomes the same four tensors:

    input_ids          = source + [EOS]                   (encoder)
    decoder_input_ids  = [decoder_start] + target          (decoder, teacher forcing)
    labels             = target + [EOS]                    (IGNORE on padding)

Span corruption (T5): about 15% of a text window's tokens, in spans of mean length 3, are dropped
from the source and each dropped span is replaced by its own sentinel; the target lists every
sentinel followed by the span it stands for:

    text    The cute dog walks in the park
    source  The <extra_id_0> walks in <extra_id_1> park
    target  <extra_id_0> cute dog <extra_id_1> the

Sentinels are extra special tokens `<extra_id_0>`, `<extra_id_1>`, ... appended to the tokenizer
after training (`add_sentinels`), the way T5's vocabulary carries them. Reusing ids from the top
of a trained vocabulary would instead steal the rarest merges (BPE) and make those words
unrepresentable; added special tokens are never produced by encoding ordinary text, are skipped
by `decode(skip_special_tokens=True)`, and are saved with the tokenizer.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers
import torch
from tokenizers import AddedToken
from torch import Tensor

from lmforge.data.mlm import EVAL_KEY, IGNORE
from lmforge.data.sources import _collect_files, _read_utf8, split_documents
from lmforge.errors import DataError, TokenizerError
from lmforge.tokenizer import Tokenizer

Example = tuple[np.ndarray, np.ndarray]  # (source ids, target ids), without EOS


# --------------------------------------------------------------------------- pairs from JSONL
def has_pairs(paths: Sequence[str | Path] | str | Path) -> bool:
    """True when the first record of the first .jsonl file among `paths` has a "source" field."""
    if isinstance(paths, str | Path):
        paths = [paths]
    for file in _collect_files(paths):
        if file.suffix.lower() != ".jsonl":
            continue
        for line in _read_utf8(file).split("\n"):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and "source" in record
    return False


def read_pairs(paths: Sequence[str | Path] | str | Path) -> list[tuple[str, str]]:
    """(source, target) strings from JSONL files (one {"source": ..., "target": ...} per line).

    Folders are searched like `read_documents` does; blank lines are skipped.

    Raises:
        DataError: a path is missing, a file is not .jsonl, a line is not a JSON object, or a
            record lacks a string "source" or "target" (the message names the line and the
            fields it has).
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    pairs: list[tuple[str, str]] = []
    for file in _collect_files(paths):
        if file.suffix.lower() != ".jsonl":
            raise DataError(
                f"{file} is not a .jsonl file; source/target pairs are read from JSONL only, so "
                "keep plain text out of a pairs run."
            )
        for lineno, line in enumerate(_read_utf8(file).split("\n"), start=1):
            if line.strip():
                pairs.append(_pair(line, f"{file}:{lineno}"))
    if not pairs:
        raise DataError(f"no source/target pairs found in {', '.join(map(str, paths))}; add some.")
    return pairs


def _pair(line: str, where: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where} is not valid JSON ({exc.msg}); write one object per line."
        ) from None
    if not isinstance(record, dict):
        raise DataError(f'{where} is not a JSON object; write {{"source": ..., "target": ...}}.')
    for key in ("source", "target"):
        if not isinstance(record.get(key), str):
            found = ", ".join(repr(k) for k in record) or "none"
            raise DataError(
                f'{where} has no string "{key}" field (fields found: {found}); write '
                '{"source": ..., "target": ...} on every line.'
            )
    return record["source"], record["target"]


def split_pairs(
    pairs: Sequence[tuple[str, str]], valid_fraction: float, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, valid) pairs, held out by the same content hash as `split_documents`."""
    if len(pairs) < 2:
        raise DataError(f"{len(pairs)} pair is too few to hold one out for validation; add more.")
    keyed = {f"{s}\0{t}": (s, t) for s, t in pairs}
    train, valid = split_documents([f"{s}\0{t}" for s, t in pairs], valid_fraction, seed)
    return [keyed[k] for k in train], [keyed[k] for k in valid]


# --------------------------------------------------------------------------- batching
def collate(
    examples: Sequence[Example], eos_id: int, pad_id: int, decoder_start_id: int
) -> dict[str, Tensor]:
    """Pad (source, target) examples into encoder/decoder tensors (see the module docstring)."""
    n = len(examples)
    src_w = max(len(s) for s, _ in examples) + 1
    tgt_w = max(len(t) for _, t in examples) + 1
    input_ids = torch.full((n, src_w), pad_id, dtype=torch.long)
    attention = torch.zeros((n, src_w), dtype=torch.long)
    dec_ids = torch.full((n, tgt_w), pad_id, dtype=torch.long)
    dec_mask = torch.zeros((n, tgt_w), dtype=torch.long)
    labels = torch.full((n, tgt_w), IGNORE, dtype=torch.long)
    for row, (source, target) in enumerate(examples):
        s, t = torch.as_tensor(source, dtype=torch.long), torch.as_tensor(target, dtype=torch.long)
        input_ids[row, : len(s)] = s
        input_ids[row, len(s)] = eos_id
        attention[row, : len(s) + 1] = 1
        dec_ids[row, 0] = decoder_start_id
        dec_ids[row, 1 : len(t) + 1] = t
        dec_mask[row, : len(t) + 1] = 1
        labels[row, : len(t)] = t
        labels[row, len(t)] = eos_id
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "decoder_input_ids": dec_ids,
        "decoder_attention_mask": dec_mask,
        "labels": labels,
    }


class _Seq2SeqBatches:
    """`.batch` and `.sequential` over `_examples(indices, rng)`; a subclass says what an index
    is (a pair, or the start of a window of a token stream)."""

    batch_size: int
    seed: int
    eos_id: int
    pad_id: int
    decoder_start_id: int

    def _count(self) -> int:  # indices a training batch draws from: [0, count)
        raise NotImplementedError

    def _eval_indices(self) -> np.ndarray:  # indices evaluation walks through, in order
        raise NotImplementedError

    def _examples(self, indices: np.ndarray, rng: np.random.Generator) -> list[Example]:
        raise NotImplementedError

    def _collate(self, examples: list[Example]) -> dict[str, Tensor]:
        return collate(examples, self.eos_id, self.pad_id, self.decoder_start_id)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """This rank's share of a step's micro-batch, drawn (with replacement) by a generator
        seeded by (seed, step, micro): the same on every run, resume and number of ranks."""
        rng = np.random.default_rng([self.seed, step, micro])
        indices = rng.integers(0, self._count(), size=self.batch_size * world)
        examples = self._examples(indices, rng)
        return self._collate(examples[rank * self.batch_size : (rank + 1) * self.batch_size])

    def sequential(self, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """The evaluation examples in order, `batch_size` at a time, with fixed noise."""
        indices = self._eval_indices()
        for i, at in enumerate(range(0, len(indices), self.batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            rng = np.random.default_rng([self.seed, EVAL_KEY, i])
            yield self._collate(self._examples(indices[at : at + self.batch_size], rng))


class Seq2SeqPairs(_Seq2SeqBatches):
    """Batches of tokenized (source, target) pairs.

    A source longer than `max_len - 1` ids or a target longer than `max_len - 1` is cut (one
    warning counts them), so `input_ids` and `labels` never exceed `max_len` positions.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        *,
        max_len: int,
        eos_id: int,
        pad_id: int,
        decoder_start_id: int,
        seed: int = 0,
        name: str = "training",
    ) -> None:
        if not examples:
            raise DataError(f"the {name} split has no source/target pairs; add more pairs.")
        keep = max_len - 1
        cut = sum(len(s) > keep or len(t) > keep for s, t in examples)
        if cut:
            warnings.warn(
                f"{cut} of {len(examples)} {name} pairs were longer than max_seq_len={max_len} "
                "tokens and were truncated.",
                stacklevel=2,
            )
        self.examples = [
            (np.asarray(s[:keep], dtype=np.int64), np.asarray(t[:keep], dtype=np.int64))
            for s, t in examples
        ]
        self.batch_size, self.seed = batch_size, seed
        self.eos_id, self.pad_id, self.decoder_start_id = eos_id, pad_id, decoder_start_id

    @classmethod
    def from_pairs(
        cls, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int, max_len: int, **kwargs
    ) -> Seq2SeqPairs:
        """Tokenize the pairs (no special tokens; EOS is added per example)."""
        sources = tokenizer.encode_batch([s for s, _ in pairs])
        targets = tokenizer.encode_batch([t for _, t in pairs])
        return cls(list(zip(sources, targets, strict=True)), batch_size, max_len=max_len, **kwargs)

    def _count(self) -> int:
        return len(self.examples)

    def _eval_indices(self) -> np.ndarray:
        return np.arange(len(self.examples))

    def _examples(self, indices: np.ndarray, rng: np.random.Generator) -> list[Example]:
        return [self.examples[int(i)] for i in indices]


# --------------------------------------------------------------------------- span corruption
def span_count(length: int, noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window: n = round(length * density) clamped to
    [1, length - 1], spans = round(n / mean_span) clamped to [1, min(n, length - n)]."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = min(max(round(n_noise / mean_span), 1), n_noise, length - n_noise)
    return n_noise, n_spans


def _random_parts(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive lengths, uniformly among all such splits."""
    cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False) + 1)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_corrupt(
    ids: Sequence[int] | np.ndarray,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    sentinel_ids: Sequence[int] = (),
    generator: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one token sequence.

    round(len * noise_density) tokens, in round(noise / mean_span) spans, are chosen; the
    sequence alternates kept and noise spans (starting with a kept one, lengths drawn uniformly
    among all splits). Span i is replaced in the source by `sentinel_ids[i]`; the target is
    sentinel_0 span_0 sentinel_1 span_1 ... Putting every span back after its sentinel gives the
    original sequence.

    Args:
        ids: the tokens (at least 2).
        noise_density: share of tokens dropped.
        mean_span: mean length of a dropped span.
        sentinel_ids: one id per possible span (see `span_count`), in order.
        generator: a numpy generator (None = a fresh unseeded one).

    Returns:
        (source, target) id arrays (no EOS).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise DataError("span corruption needs at least 2 tokens per sequence.")
    rng = generator if generator is not None else np.random.default_rng()
    n_noise, n_spans = span_count(len(ids), noise_density, mean_span)
    if n_spans > len(sentinel_ids):
        raise TokenizerError(
            f"a window of {len(ids)} tokens needs {n_spans} sentinels but only "
            f"{len(sentinel_ids)} were given; add more with add_sentinels."
        )
    noise = _random_parts(n_noise, n_spans, rng)
    kept = _random_parts(len(ids) - n_noise, n_spans, rng)
    source, target, at = [], [], 0
    for i in range(n_spans):
        source.append(ids[at : at + kept[i]])
        at += kept[i]
        source.append([sentinel_ids[i]])
        target.append([sentinel_ids[i]])
        target.append(ids[at : at + noise[i]])
        at += noise[i]
    return np.concatenate(source).astype(np.int64), np.concatenate(target).astype(np.int64)


def sentinel_tokens(n: int) -> list[str]:
    """The names of the first n sentinels: <extra_id_0> ... <extra_id_{n-1}> (T5's spelling)."""
    return [f"<extra_id_{i}>" for i in range(n)]


def add_sentinels(tokenizer: Tokenizer, n: int) -> tuple[Tokenizer, list[int]]:
    """A tokenizer with `<extra_id_0>` ... `<extra_id_{n-1}>` special tokens (those it lacks are
    appended after its vocabulary), and their ids in order."""
    names = sentinel_tokens(n)
    missing = [t for t in names if tokenizer.token_to_id(t) is None]
    if missing:  # on a copy of the backend: the given tokenizer stays as it was
        backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        tokenizer = Tokenizer(
            backend,
            kind=tokenizer.kind,
            roles=tokenizer.roles,
            model_max_length=tokenizer.model_max_length,
            chat_template=tokenizer.chat_template,
        )
    return tokenizer, [tokenizer.token_to_id(t) for t in names]


class SpanCorruption(_Seq2SeqBatches):
    """Span-corruption examples from random windows of `window` tokens of a token stream.

    With window = max_len - 1 the source (window - noise + spans, + EOS) never exceeds max_len.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        *,
        window: int,
        sentinel_ids: Sequence[int],
        eos_id: int,
        pad_id: int,
        decoder_start_id: int,
        noise_density: float = 0.15,
        mean_span: float = 3.0,
        seed: int = 0,
        name: str = "training",
    ) -> None:
        if window < 2:
            raise DataError(f"span corruption needs seq_len of at least 3, got {window + 1}.")
        if len(tokens) < window + 1:
            raise DataError(
                f"the {name} split has {len(tokens)} tokens, fewer than one window of "
                f"{window + 1}; add more text or lower seq_len."
            )
        self.tokens, self.window = tokens, window
        self.sentinel_ids = list(sentinel_ids)
        self.noise_density, self.mean_span = noise_density, mean_span
        self.batch_size, self.seed = batch_size, seed
        self.eos_id, self.pad_id, self.decoder_start_id = eos_id, pad_id, decoder_start_id

    def _count(self) -> int:  # any window start
        return len(self.tokens) - self.window + 1

    def _eval_indices(self) -> np.ndarray:  # non-overlapping windows from the start
        return np.arange(len(self.tokens) // self.window) * self.window

    def _examples(self, indices: np.ndarray, rng: np.random.Generator) -> list[Example]:
        return [
            span_corrupt(
                self.tokens[int(i) : int(i) + self.window].astype(np.int64),
                self.noise_density,
                self.mean_span,
                self.sentinel_ids,
                rng,
            )
            for i in indices
        ]
