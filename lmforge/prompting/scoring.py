"""Scoring label words at a prompt's slot: cloze with masked LMs, likelihood with causal LMs.

A prompt is split at its slot into `before` and `after` (see `Template`); a label word w has
tokens w_1..w_n. With a masked LM the slot becomes n mask tokens and

    s(w) = (1/n) sum_j log P([MASK]_j = w_j | prompt)          (cloze: mean over the word's tokens)

The n masks are filled independently, so the sum would be an approximate joint log-probability
that punishes long words; the mean (a per-token geometric mean) puts words of any length on one
scale, and for one-token words both are log P([MASK] = w). With a causal LM the text before the
slot is the context c and

    s(w) = sum_j log P(w_j | c, w_<j)                          (the exact log-likelihood of w)

A label's words are alternatives, so their probabilities add, and labels are normalised:

    S(y) = log sum_{w in V(y)} exp s(w),        p(y | x) = softmax_y S(y)

Contextual calibration (Zhao et al., 2021, "Calibrate before use") divides by the label
probabilities the same prompt gives a content-free input ("N/A", "", "[MASK]"):

    p_cf = mean_cf p(. | cf) / sum(mean_cf p(. | cf))
    q(y | x) = (p(y | x) / p_cf(y)) / sum_y' (p(y' | x) / p_cf(y'))

whose argmax equals that of the paper's softmax(W p) with W = diag(p_cf)^-1, b = 0.

When the word follows whitespace in the prompt ("It was [MASK]"), the whitespace is moved onto
the word (" great"), as byte-level BPE tokenizers spell a word inside a sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError, TokenizerError
from lmforge.models import Transformer
from lmforge.prompting.template import Verbalizer
from lmforge.tokenizer import Tokenizer
from lmforge.utils.progress import bar

Mode = Literal["cloze", "causal"]
Prompt = tuple[str, str]  # (text before the slot, text after it)


def scoring_mode(model: Transformer) -> Mode:
    """ "cloze" for an encoder with an MLM head, "causal" for a decoder with an LM head."""
    cfg = model.cfg
    if cfg.arch == "encoder" and "mlm" in cfg.heads:
        return "cloze"
    if cfg.arch == "decoder" and "lm" in cfg.heads:
        return "causal"
    raise CheckpointError(
        f"the model ({cfg.arch}, heads={list(cfg.heads)}) is neither a masked LM nor a causal LM, "
        "so it cannot score label words; use a model with an 'mlm' head (e.g. an imported "
        "BertForMaskedLM) or a decoder with an 'lm' head (a sentence-embedding model such as "
        "all-MiniLM-L6-v2 has neither)."
    )


def special_frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts around a text: ([CLS], [SEP]) for WordPiece, ([bos], [])
    for lmforge's BPE; found by encoding a word with and without them."""
    plain = tokenizer.encode("a")
    full = tokenizer.encode("a", add_special_tokens=True)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def label_log_scores(word_scores: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """(N, W) word scores s(w) -> (N, L) label scores S(y) = log sum_{w in V(y)} exp s(w)."""
    return torch.stack([word_scores[:, list(g)].logsumexp(-1) for g in groups], dim=-1)


def content_free_probs(cf_probs: Tensor) -> Tensor:
    """(..., C, L) label probabilities of C content-free inputs -> (..., L) p_cf (mean, renormalised)."""
    mean = cf_probs.mean(dim=-2)
    return mean / mean.sum(-1, keepdim=True)


def calibrate(probs: Tensor, p_cf: Tensor) -> Tensor:
    """q(y|x) = (p(y|x) / p_cf(y)) / sum_y' (p(y'|x) / p_cf(y')); probs (..., L), p_cf broadcastable."""
    ratio = probs / p_cf.clamp(min=torch.finfo(probs.dtype).tiny)
    return ratio / ratio.sum(-1, keepdim=True)


class LabelScorer:
    """Scores every verbalizer word at the slot of prompts with one model.

    Args:
        model: an lmforge masked LM (encoder + "mlm" head) or causal LM (decoder + "lm" head).
        tokenizer: its tokenizer (a masked LM's must have a mask token).
        verbalizer: label -> words.
        batch_size: prompts per forward pass.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        verbalizer: Verbalizer,
        batch_size: int = 8,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.progress = progress  # a tqdm bar over the forward passes
        self.mode: Mode = scoring_mode(model)
        if self.mode == "cloze" and tokenizer.mask_id is None:
            raise TokenizerError(
                "the tokenizer has no mask token, which cloze scoring needs; set mask_token in "
                "tokenizer_config.json."
            )
        self.limit = min(model.cfg.max_seq_len, tokenizer.model_max_length or 10**9)
        self.front, self.back = special_frame(tokenizer)
        if self.mode == "causal":
            self.back = []  # the continuation ends the sequence
        self.pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
        self.entries = [(y, w) for y, ws in verbalizer.words.items() for w in ws]
        self.groups: list[list[int]] = []
        for label in verbalizer.labels:
            self.groups.append([k for k, (y, _) in enumerate(self.entries) if y == label])
        self._word_cache: dict[tuple[str, bool], list[int]] = {}
        for label, word in self.entries:
            self.word_ids(word, space=True, label=label)

    # ------------------------------------------------------------------ encoding
    def word_ids(self, word: str, space: bool, label: str = "") -> list[int]:
        """Token ids of a verbalizer word (with a leading space when it follows whitespace)."""
        key = (word, space)
        if key not in self._word_cache:
            ids = self.tokenizer.encode((" " if space else "") + word)
            unk = self.tokenizer.unk_id
            if not ids or (unk is not None and unk in ids):
                raise TokenizerError(
                    f"verbalizer word '{word}'{f' (label {label!r})' if label else ''} is not in "
                    "the tokenizer's vocabulary (it encodes to the unknown token); choose a word "
                    "the model knows."
                )
            self._word_cache[key] = ids
        return self._word_cache[key]

    def _encode(self, prompt: Prompt) -> tuple[list[int], list[int], bool]:
        """(front + ids of the text before the slot, ids after it + back, whitespace before slot)."""
        before, after = prompt
        space = before[-1:].isspace()
        ctx = self.front + self.tokenizer.encode(before.rstrip() if space else before)
        if self.mode == "causal":
            if not ctx:
                raise ConfigError(
                    "a causal LM needs text before the label slot (its tokenizer adds no bos "
                    "token); put the slot after {text}."
                )
            return ctx, [], space
        return ctx, self.tokenizer.encode(after) + self.back, space

    def length(self, prompt: Prompt) -> int:
        """Tokens of the longest sequence scoring `prompt` needs."""
        ctx, tail, space = self._encode(prompt)
        longest = max(len(self.word_ids(w, space)) for _, w in self.entries)
        return len(ctx) + longest + len(tail)

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def word_scores(self, prompts: Sequence[Prompt]) -> Tensor:
        """(N, W) s(w) for every prompt and every (label, word) entry, in `self.entries` order."""
        out = torch.empty(len(prompts), len(self.entries))
        starts = range(0, len(prompts), self.batch_size)
        for start in bar(starts, len(starts), "scoring prompts", enabled=self.progress):
            chunk = prompts[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._score_chunk(chunk)
        return out

    def label_scores(self, prompts: Sequence[Prompt]) -> Tensor:
        """(N, L) S(y) in verbalizer label order."""
        return label_log_scores(self.word_scores(prompts), self.groups)

    def probs(self, prompts: Sequence[Prompt]) -> Tensor:
        """(N, L) p(y | x) = softmax_y S(y)."""
        return self.label_scores(prompts).softmax(-1)

    def _score_chunk(self, prompts: Sequence[Prompt]) -> Tensor:
        scores = torch.empty(len(prompts), len(self.entries))
        seqs: list[list[int]] = []
        where: list[
            list[int]
        ] = []  # positions whose next-token (causal) / own (cloze) logits count
        keys: dict[tuple[int, int], int] = {}  # (prompt, mask count) -> sequence (cloze)
        plan: list[tuple[int, int, int, list[int]]] = []  # (prompt, entry, sequence, word ids)
        for i, prompt in enumerate(prompts):
            ctx, tail, space = self._encode(prompt)
            for e, (_, word) in enumerate(self.entries):
                ids = self.word_ids(word, space)
                n = len(ids)
                if self.mode == "cloze":
                    if (i, n) not in keys:
                        keys[i, n] = len(seqs)
                        seqs.append(ctx + [self.tokenizer.mask_id] * n + tail)  # type: ignore[list-item]
                        where.append(list(range(len(ctx), len(ctx) + n)))
                    plan.append((i, e, keys[i, n], ids))
                else:
                    plan.append((i, e, len(seqs), ids))
                    seqs.append(ctx + ids)
                    where.append(list(range(len(ctx) - 1, len(ctx) - 1 + n)))
        logps = self._log_probs(seqs, where)
        for i, e, s, ids in plan:
            token_logp = logps[s][torch.arange(len(ids)), torch.tensor(ids)]  # (n,)
            scores[i, e] = token_logp.mean() if self.mode == "cloze" else token_logp.sum()
        return scores

    def _log_probs(self, seqs: list[list[int]], where: list[list[int]]) -> list[Tensor]:
        """log softmax of the logits at the given positions of each sequence: (n_i, vocab) each."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        device = next(self.model.parameters()).device
        logits = self.model(ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        return [logits[b, pos].float().log_softmax(-1).cpu() for b, pos in enumerate(where)]
