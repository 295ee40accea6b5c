"""Rebuild the tokenizer embedded in a GGUF file as a Hugging Face `tokenizers` pipeline.

GGUF keeps the vocabulary as metadata arrays: `tokenizer.ggml.tokens` (id -> string),
`tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
`tokenizer.ggml.scores` and `tokenizer.ggml.merges`, plus the special ids
(`tokenizer.ggml.bos_token_id`, ...). Two models are rebuilt:

- "gpt2": byte-level BPE (GPT-2, Llama 3). Merges are given as "left right" strings; the
  pre-tokenizer regex is chosen by `tokenizer.ggml.pre` (GPT-2's or Llama 3's).
- "llama": SentencePiece BPE (Llama 1/2, Mistral). Encoding repeatedly joins the adjacent pair
  whose joined string is the vocabulary entry with the highest score; characters missing from
  the vocabulary fall back to their UTF-8 bytes (`<0x41>` tokens). This equals BPE whose merges
  are every split (left, right) of a vocabulary piece, ranked by the piece's score (highest
  first); spaces become "▁" and a leading "▁" is added (`tokenizer.ggml.add_space_prefix`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from lmforge.errors import CheckpointError
from lmforge.interop.gguf_file import meta_int, meta_str
from lmforge.tokenizer import Role, Tokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SUPPORTED_TOKENIZERS = ("gpt2", "llama")
SPACE = "\u2581"  # SentencePiece's "▁"

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> (split regex, or None for GPT-2's built into ByteLevel; ignore_merges)
PRE_TOKENIZERS: dict[str, tuple[str | None, bool]] = {
    "default": (None, False),
    "gpt-2": (None, False),
    "gpt2": (None, False),
    "llama-bpe": (LLAMA3_SPLIT, True),
    "llama3": (LLAMA3_SPLIT, True),
    "smaug-bpe": (LLAMA3_SPLIT, False),
    "dbrx": (LLAMA3_SPLIT, False),
    "qwen2": (QWEN2_SPLIT, False),
}
_ROLE_KEYS: dict[Role, str] = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "unk": "unknown_token_id",
    "pad": "padding_token_id",
    "sep": "seperator_token_id",  # sic: the GGUF key is spelled so
    "mask": "mask_token_id",
}


def _meta(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    return meta.get(f"tokenizer.ggml.{key}", default)


def _flag(meta: dict[str, Any], key: str, default: bool) -> bool:
    value = _meta(meta, key, default)
    if isinstance(value, np.bool_ | np.integer):
        value = value.item()
    if not isinstance(value, bool | int):
        raise CheckpointError(
            f"tokenizer.ggml.{key} must be true or false; the GGUF file's tokenizer is damaged."
        )
    return bool(value)


def _numbers(meta: dict[str, Any], key: str, default: np.ndarray) -> np.ndarray:
    """A numeric metadata array (GGUF stores those as numpy arrays); anything else names it."""
    value = _meta(meta, key, default)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.ndim != 1:
        raise CheckpointError(
            f"tokenizer.ggml.{key} must be an array of numbers; the GGUF file's tokenizer is "
            "damaged."
        )
    return value.astype(np.float64)


def spm_merges(
    tokens: list[str], scores: np.ndarray, mergeable: np.ndarray
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's highest-score-first joining.

    Every split piece = left + right with both halves in the vocabulary becomes the merge
    (left, right); merges are ranked by score(piece), highest first (ties: lower piece id, then
    shorter left half), so BPE's lowest-rank-first order joins pairs as SentencePiece does.

    Only splits where both halves have the length of some vocabulary entry are tried, and the
    characters compared are counted: the work stays linear in the vocabulary's size (one
    2M-character piece costs as much as its length, not its length squared), and a vocabulary
    built to need more is refused.
    """
    ids: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if mergeable[i]:
            ids.setdefault(tok, i)
    lengths = sorted({len(t) for t in ids})
    have = set(lengths)
    budget = 64 * sum(lengths) + 64 * len(ids) + (1 << 20)
    found = []
    for piece, i in ids.items():
        size = len(piece)
        for k in lengths:
            if k >= size:
                break
            if size - k not in have:
                continue
            budget -= size
            if budget < 0:
                raise CheckpointError(
                    "tokenizer.ggml.tokens is built so that deriving its merges would take "
                    "time quadratic in its size; the GGUF file's tokenizer is damaged."
                )
            left = piece[:k]
            if left in ids:
                right = piece[k:]
                if right in ids:
                    found.append((-float(scores[i]), i, k, left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _vocab(tokens: list[str]) -> dict[str, int]:
    """token -> id; a string listed twice is refused (llama.cpp refuses it too)."""
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        first = vocab.setdefault(tok, i)
        if first != i:
            raise CheckpointError(
                f"tokenizer.ggml.tokens lists {tok[:40]!r} twice (ids {first} and {i}); the "
                "GGUF file's tokenizer is damaged."
            )
    return vocab


def _gpt2_backend(meta: dict[str, Any], tokens: list[str]) -> tokenizers.Tokenizer:
    raw = _meta(meta, "merges", [])
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise CheckpointError(
            "tokenizer.ggml.merges must be an array of strings; the GGUF file's tokenizer is "
            "damaged."
        )
    merges = [tuple(m.split(" ", 1)) for m in raw]
    if any(len(m) != 2 for m in merges):
        raise CheckpointError(
            "tokenizer.ggml.merges holds an entry without a space between its two parts; the "
            "GGUF file's tokenizer is damaged."
        )
    vocab = _vocab(tokens)
    for left, right in merges:
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise CheckpointError(
                f"tokenizer.ggml.merges joins {left[:40]!r} and {right[:40]!r}, which (or whose "
                "join) is not in tokenizer.ggml.tokens; the GGUF file's tokenizer is damaged."
            )
    pre = meta_str(meta, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        warnings.warn(
            f"GGUF pre-tokenizer '{pre}' is not known to lmforge; GPT-2's splitting is used, so "
            "some texts may tokenize differently than in llama.cpp.",
            stacklevel=3,
        )
    split, ignore_merges = PRE_TOKENIZERS.get(pre, (None, False))
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges)
    backend = tokenizers.Tokenizer(model)
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def _llama_backend(
    meta: dict[str, Any], tokens: list[str], types: np.ndarray, unk: int | None
) -> tokenizers.Tokenizer:
    scores = _numbers(meta, "scores", np.zeros(len(tokens)))
    if not np.isfinite(scores).all():
        raise CheckpointError(
            "tokenizer.ggml.scores holds NaN or Inf; the GGUF file's tokenizer is damaged."
        )
    if len(scores) != len(tokens):
        raise CheckpointError(
            f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens; the "
            "GGUF file's tokenizer is damaged."
        )
    mergeable = np.isin(types, (NORMAL, USER_DEFINED))
    model = models.BPE(
        vocab=_vocab(tokens),
        merges=spm_merges(tokens, scores, mergeable),
        unk_token=tokens[unk] if unk is not None else None,
        fuse_unk=True,
        byte_fallback=bool((types == BYTE).any()),
    )
    backend = tokenizers.Tokenizer(model)
    prefix = _flag(meta, "add_space_prefix", True)
    spaces = normalizers.Replace(" ", SPACE)
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend(SPACE), spaces]) if prefix else spaces
    )
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def tokenizer_from_gguf(meta: dict[str, Any], max_length: int | None = None) -> Tokenizer | None:
    """The tokenizer of a GGUF file's metadata, or None when the file carries no vocabulary.

    Args:
        meta: the file's metadata (`GGUFFile.metadata`).
        max_length: the model's context length, recorded as `model_max_length`.
    """
    kind = meta_str(meta, "tokenizer.ggml.model")
    tokens = _meta(meta, "tokens")
    if kind in (None, "none", "no_vocab") or tokens is None or len(tokens) == 0:
        return None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(
            "tokenizer.ggml.tokens must be an array of strings; the GGUF file's tokenizer is "
            "damaged."
        )
    if kind not in SUPPORTED_TOKENIZERS:
        raise CheckpointError(
            f"GGUF tokenizer model '{kind}' is not supported; supported tokenizer models: "
            f"{', '.join(SUPPORTED_TOKENIZERS)}."
        )
    tokens = list(tokens)
    n = len(tokens)
    types = _numbers(meta, "token_type", np.full(n, NORMAL)).astype(np.int64)
    if len(types) != n:
        raise CheckpointError(
            f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens; the GGUF "
            "file's tokenizer is damaged."
        )
    ids: dict[Role, int] = {}
    for role, key in _ROLE_KEYS.items():
        value = meta_int(meta, f"tokenizer.ggml.{key}")
        if value is not None and 0 <= value < n:
            ids[role] = value
    if kind == "gpt2":
        backend = _gpt2_backend(meta, tokens)
    else:
        backend = _llama_backend(meta, tokens, types, ids.get("unk"))
    control = [i for i in range(n) if types[i] == CONTROL] + list(ids.values())
    backend.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i in sorted(set(control))]
    )
    user = [i for i in range(n) if types[i] == USER_DEFINED]
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    _add_markers(backend, meta, kind, tokens, ids)
    roles = {role: tokens[i] for role, i in ids.items()}
    template = meta.get("tokenizer.chat_template")
    return Tokenizer(
        backend,
        kind="bpe",
        roles=roles,
        model_max_length=max_length,
        chat_template=template if isinstance(template, str) else None,
    )


def _add_markers(
    backend: tokenizers.Tokenizer,
    meta: dict[str, Any],
    kind: str,
    tokens: list[str],
    ids: dict[Role, int],
) -> None:
    """BOS in front / EOS behind when `add_special_tokens=True`, as the file asks
    (`tokenizer.ggml.add_bos_token`: default on for SentencePiece, off for GPT-2 BPE)."""
    add_bos = _flag(meta, "add_bos_token", kind == "llama") and "bos" in ids
    add_eos = _flag(meta, "add_eos_token", False) and "eos" in ids
    if not (add_bos or add_eos):
        return

    def seq(name: str, type_id: int) -> list[str]:
        out = [f"{tokens[ids['bos']]}:{type_id}"] if add_bos else []
        out.append(f"${name}:{type_id}")
        return out + ([f"{tokens[ids['eos']]}:{type_id}"] if add_eos else [])

    used = {tokens[ids[r]]: ids[r] for r, on in (("bos", add_bos), ("eos", add_eos)) if on}
    backend.post_processor = TemplateProcessing(
        single=seq("A", 0), pair=seq("A", 0) + seq("B", 1), special_tokens=list(used.items())
    )
