"""Model-backed synonym sources for `lmforge.data.augment`, and `lmforge augment` on a file.

Embedding neighbours: with the model's input-embedding matrix E (V x d) and unit rows
e_hat_v = E_v / ||E_v||, the synonyms of a word w (one whole-word token) are the k whole-word
tokens v != w with the largest cos(w, v) = e_hat_w . e_hat_v, kept if at least `min_cos`.
A whole-word token is alphabetic, at least 3 letters, not a WordPiece continuation (##...), not
a byte-level space marker variant of w, and not a special token.

Contextual substitution: the word at position i is replaced by the tokenizer's mask token and a
masked LM (a BERT-family model dir with an "mlm" head) proposes its k most probable whole-word
tokens for that slot, the original word left out.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.augment import EDA_OPS, augment_records, check_ops
from lmforge.data.tasks import read_task_file
from lmforge.errors import CheckpointError, ConfigError, TokenizerError
from lmforge.recipes.embed import encode_texts, max_tokens
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.utils.fs import atomic_write_text

#: Function words get no synonyms (their embedding neighbours are other function words).
STOPWORDS = frozenset(
    "a an the and or but if of at by for with about to from in on off over under again then "
    "once here there when where why how all any both each few more most other some such no nor "
    "not only own same so than too very can will just is are was were be been being have has had "
    "do does did this that these those it its he she they them his her their we you i me my our "
    "your who whom which what as into through during before after above below up down out".split()
)


def _bare(token: str) -> str:
    """A token without a byte-level BPE space marker."""
    return token[1:] if token.startswith("Ġ") else token


def _is_word(token: str | None, specials: set[str]) -> bool:
    if token is None or token in specials or token.startswith("##"):
        return False
    bare = _bare(token)
    return len(bare) >= 3 and bare.isalpha()


class EmbeddingNeighbours:
    """word -> its nearest whole-word tokens in the model's input embeddings (see above)."""

    def __init__(self, model_dir: str | Path, k: int = 5, min_cos: float = 0.4) -> None:
        model, self.tokenizer = load_model_and_tokenizer(model_dir)
        self.k, self.min_cos = k, min_cos
        weight = model.embed.tok.weight.detach().float()
        specials = set(self.tokenizer.roles.values())
        vocab = min(weight.size(0), self.tokenizer.vocab_size)
        tokens = [self.tokenizer.id_to_token(i) for i in range(vocab)]
        self.word_ids = torch.tensor([i for i, t in enumerate(tokens) if _is_word(t, specials)])
        self.words = [_bare(tokens[i]) for i in self.word_ids.tolist()]
        self.unit = F.normalize(weight[self.word_ids], dim=-1)  # (W, d)
        self.row = {w: r for r, w in enumerate(self.words)}
        self.lower = bool(self.words) and all(w == w.lower() for w in self.words[:2000])
        self._cached = lru_cache(maxsize=50_000)(self._neighbours)

    def _neighbours(self, word: str) -> tuple[str, ...]:
        r = self.row.get(word)
        if r is None:
            return ()
        cos = self.unit @ self.unit[r]  # (W,)
        cos[r] = -2.0
        top = torch.topk(cos, min(self.k + 4, cos.numel()))
        out = []
        for c, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            candidate = self.words[i]
            if c >= self.min_cos and candidate.lower() != word.lower() and candidate not in out:
                out.append(candidate)
        return tuple(out[: self.k])

    def __call__(self, word: str) -> list[str]:
        core = word.strip(".,;:!?\"'()")
        if core != word or not core:
            return []  # keep punctuation-bearing words as they are
        key = core.lower() if self.lower else core
        if key.lower() in STOPWORDS:
            return []
        return list(self._cached(key))


class MaskedLMContext:
    """(words, i) -> a masked LM's whole-word candidates for position i (see above)."""

    def __init__(self, model_dir: str | Path, k: int = 5) -> None:
        self.model, self.tokenizer = load_model_and_tokenizer(model_dir)
        if "mlm" not in self.model.cfg.heads:
            raise CheckpointError(
                f"the model in {model_dir} has no masked-language-model head; contextual "
                "substitution needs a BERT-family model dir with one (e.g. BertForMaskedLM)."
            )
        self.mask = self.tokenizer.roles.get("mask")
        if self.mask is None:
            raise TokenizerError(f"the tokenizer in {model_dir} has no mask token.")
        self.k = k
        self.limit = max_tokens(self.model, self.tokenizer)
        self.specials = set(self.tokenizer.roles.values())

    @torch.inference_mode()
    def __call__(self, words: list[str], i: int) -> list[str]:
        masked = [*words[:i], self.mask, *words[i + 1 :]]
        ids = encode_texts(self.tokenizer, [" ".join(masked)], self.limit)[0]
        where = [j for j, t in enumerate(ids) if t == self.tokenizer.mask_id]
        if not where:
            return []
        logits = self.model(torch.tensor([ids])).logits[0, where[0]].float()  # (V,)
        out: list[str] = []
        for t in torch.topk(logits, min(self.k * 4, logits.numel())).indices.tolist():
            token = self.tokenizer.id_to_token(t)
            if _is_word(token, self.specials) and _bare(token).lower() != words[i].lower():
                out.append(_bare(token))
            if len(out) == self.k:
                break
        return out


def augment_file(
    data: str | Path,
    out: str | Path,
    n: int = 2,
    *,
    ops: list[str] | None = None,
    alpha: float = 0.1,
    seed: int = 0,
    model: str | Path | None = None,
    fill_mask_model: str | Path | None = None,
) -> int:
    """`lmforge augment`: read a classification file, write it with n augmented copies per row
    (JSONL); returns the number of rows written."""
    ops = check_ops(ops or (list(EDA_OPS) if model else ["swap", "delete"]))
    needs_synonyms = {"insert", "synonym"} & set(ops)
    if needs_synonyms and model is None:
        raise ConfigError(
            f"augmentation {', '.join(sorted(needs_synonyms))} needs --model (a model dir whose "
            "embedding neighbours are the synonyms)."
        )
    synonyms = EmbeddingNeighbours(model) if needs_synonyms else None
    contextual = MaskedLMContext(fill_mask_model) if fill_mask_model is not None else None
    records = read_task_file(data, "classify")
    rows = augment_records(records, n, seed=seed, ops=ops, alpha=alpha, synonyms=synonyms,
                           contextual=contextual)  # fmt: skip
    keep = ("text", "text_pair", "label")
    lines = [json.dumps({k: r[k] for k in keep if r.get(k) is not None}, ensure_ascii=False)
             for r in rows]  # fmt: skip
    atomic_write_text(out, "\n".join(lines) + "\n")
    return len(rows)


def augment_training(records: list, n: int, model_dir: str | Path, seed: int = 0) -> list:
    """`lmforge finetune --augment N`: the training records plus N EDA copies of each (swap,
    delete, insert, synonym; synonyms from `model_dir`'s own embedding neighbours)."""
    return augment_records(records, n, seed=seed, synonyms=EmbeddingNeighbours(model_dir))
