"""Train a byte-level BPE or a BERT-style WordPiece tokenizer from an iterable of texts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import DataError, TokenizerError, did_you_mean
from lmforge.tokenizer.core import Tokenizer
from lmforge.tokenizer.specials import BPE_SPECIALS, WORDPIECE_SPECIALS

_KINDS = ("bpe", "wordpiece")
_N_BYTES = 256


#: The largest vocabulary `train_tokenizer` builds (past it the Rust trainer may abort).
MAX_VOCAB = 1 << 21


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    kind: Literal["bpe", "wordpiece"] = "bpe",
    min_frequency: int = 2,
    *,
    lowercase: bool = False,
    model_max_length: int | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer on ``texts`` (consumed once, streamed to the Rust trainer).

    ``"bpe"`` is byte-level BPE: every text is seen as UTF-8 bytes, all 256 bytes are in the
    vocabulary, so ``decode(encode(s)) == s`` exactly for any text. Special tokens are
    ``<|bos|> <|eos|> <|pad|> <|unk|> <|mask|>`` with ids 0..4.

    ``"wordpiece"`` is BERT-style: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` with ids 0..4, the BERT
    normalizer and pre-tokenizer, and ``[CLS] a [SEP] b [SEP]`` for pairs. Its round trip is not
    exact by nature: spacing around punctuation is normalised, control characters are dropped,
    characters unseen in training become ``[UNK]``, and the vocabulary may exceed ``vocab_size``
    because every character seen in training is kept.

    Args:
        texts: training documents.
        vocab_size: target vocabulary size, special tokens included.
        kind: ``"bpe"`` or ``"wordpiece"``.
        min_frequency: a pair must occur this often to be merged.
        lowercase: WordPiece only; lowercase (and strip accents) before tokenizing.
        model_max_length: recorded in ``tokenizer_config.json`` when given.
        show_progress: show the Rust trainer's progress bar.

    Returns:
        The trained :class:`Tokenizer`.
    """
    if kind not in _KINDS:
        raise TokenizerError(
            f"unknown tokenizer kind '{kind}'{did_you_mean(str(kind), _KINDS)}; "
            "use 'bpe' or 'wordpiece'."
        )
    specials = BPE_SPECIALS if kind == "bpe" else WORDPIECE_SPECIALS
    smallest = len(specials) + (_N_BYTES if kind == "bpe" else 1)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(
            f"vocab size {vocab_size!r} is not a whole number; pass for example --vocab-size 8000."
        )
    if vocab_size < smallest:
        need = (
            f"byte-level BPE needs at least {smallest} ({_N_BYTES} bytes + {len(specials)} "
            "special tokens)"
            if kind == "bpe"
            else f"WordPiece needs at least {smallest} ({len(specials)} special tokens + 1 piece)"
        )
        raise TokenizerError(
            f"vocab size {vocab_size} is too small: {need}; pass --vocab-size {smallest} or more."
        )
    if vocab_size > MAX_VOCAB:
        raise TokenizerError(
            f"vocab size {vocab_size} is larger than lmforge trains ({MAX_VOCAB}); the largest "
            "published vocabularies hold about 256,000 tokens, pass a smaller --vocab-size."
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise TokenizerError(
            f"min frequency {min_frequency} is invalid; pass a whole number of 0 or more."
        )

    special_tokens = list(specials.values())
    if kind == "bpe":
        backend = _bpe_backend()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=show_progress,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        backend = _wordpiece_backend(lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=show_progress,
            special_tokens=special_tokens,
        )

    counter = _Counter()
    try:
        backend.train_from_iterator(counter.wrap(texts), trainer=trainer)
    except UnicodeEncodeError as exc:
        raise DataError(
            f"a training text holds the lone surrogate U+{ord(exc.object[exc.start]):04X}, which "
            "is not valid Unicode; clean the texts before training."
        ) from None
    if counter.non_blank == 0:
        raise DataError(
            "the training texts are empty; pass at least one document with non-blank text "
            "(or use the default corpus)."
        )
    _add_post_processor(backend, kind)
    return Tokenizer(
        backend,
        kind=kind,
        roles=dict(specials),
        model_max_length=model_max_length,
    )


class _Counter:
    """Counts non-blank texts as they stream past, and checks that each one is a string."""

    def __init__(self) -> None:
        self.non_blank = 0

    def wrap(self, texts: Iterable[str]) -> Iterator[str]:
        if isinstance(texts, str):
            raise DataError(
                "the training texts are a single string; pass a list of documents instead."
            )
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(
                    f"training text {position} is a {type(text).__name__}, not a string; "
                    "pass an iterable of strings."
                )
            if text and not text.isspace():
                self.non_blank += 1
            yield text


def _bpe_backend() -> tokenizers.Tokenizer:
    """An untrained byte-level BPE pipeline: no normalizer, so no text is ever changed."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _wordpiece_backend(lowercase: bool) -> tokenizers.Tokenizer:
    """An untrained BERT-style WordPiece pipeline."""
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token=WORDPIECE_SPECIALS["unk"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _add_post_processor(backend: tokenizers.Tokenizer, kind: str) -> None:
    """Markers added by ``add_special_tokens=True``: BPE ``<|bos|> a <|eos|> b <|eos|>``,
    WordPiece ``[CLS] a [SEP] b [SEP]``; the second text of a pair gets token type 1."""
    if kind == "bpe":
        start, sep = BPE_SPECIALS["bos"], BPE_SPECIALS["eos"]
        single = f"{start} $A:0"
    else:
        start, sep = WORDPIECE_SPECIALS["cls"], WORDPIECE_SPECIALS["sep"]
        single = f"{start} $A:0 {sep}:0"
    backend.post_processor = processors.TemplateProcessing(
        single=single,
        pair=f"{start} $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(tok, backend.token_to_id(tok)) for tok in (start, sep)],
    )
