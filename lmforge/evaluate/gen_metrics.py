"""Metrics for generated text: BLEU, chrF, ROUGE-1/2/L, exact match and token F1.

All scores are on a 0-100 scale, as sacrebleu and the SQuAD evaluation script report them.

- BLEU and chrF come from `sacrebleu` (corpus-level, its default 13a tokenizer for BLEU; for text
  in Chinese/Japanese the "zh" tokenizer splits CJK characters). The field's reference
  implementation, so numbers compare with papers.
- ROUGE-1/2/L from Google's `rouge-score` (the mean F-measure over examples, Porter stemming).
  Its default tokenizer keeps only [a-z0-9]; for CJK text each CJK character is one token.
- Exact match and token F1 use SQuAD's answer normalisation: lowercase, drop punctuation, drop
  the articles a/an/the, collapse whitespace (`normalize_answer`). With several references an
  example scores its best match:

      EM = (100/N) sum_i max_r 1[norm(p_i) = norm(r)]
      F1 = (100/N) sum_i max_r 2 P R / (P + R),  P = |common| / |tokens(p)|,
                                                 R = |common| / |tokens(r)|
      (common = the multiset intersection of the normalised tokens; F1 = 1[p = r] when either
      side has no tokens, as SQuAD v2 scores a "no answer")

`sacrebleu` and `rouge-score` are imported only when their metric is computed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

References = Sequence[str] | Sequence[Sequence[str]]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, strip punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    """Normalised answer tokens; CJK text splits per character (it has no spaces)."""
    norm = normalize_answer(text)
    if _CJK.search(norm):
        return [t for t in re.sub(f"({_CJK.pattern})", r" \1 ", norm).split()]
    return norm.split()


def exact_match_one(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1_one(prediction: str, reference: str) -> float:
    """SQuAD token F1 of one prediction against one reference, in [0, 1] (see module doc)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def _reference_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(
            f"there are {len(predictions)} predictions but {len(references)} references; pass "
            "one reference (or a list of them) per prediction."
        )
    if not predictions:
        raise ValueError("there are no predictions to score; pass at least one.")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("an example has an empty list of references; give it at least one.")
    return refs


def exact_match(predictions: Sequence[str], references: References) -> float:
    """SQuAD exact match (0-100), each prediction against its best reference."""
    refs = _reference_lists(predictions, references)
    hits = [max(exact_match_one(p, r) for r in rs) for p, rs in zip(predictions, refs, strict=True)]
    return 100.0 * sum(hits) / len(hits)


def token_f1(predictions: Sequence[str], references: References) -> float:
    """SQuAD token F1 (0-100), each prediction against its best reference."""
    refs = _reference_lists(predictions, references)
    f1 = [max(token_f1_one(p, r) for r in rs) for p, rs in zip(predictions, refs, strict=True)]
    return 100.0 * sum(f1) / len(f1)


def _by_position(refs: list[list[str]]) -> list[list[str]]:
    """sacrebleu's layout: one stream per reference position (short lists padded with None)."""
    width = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def _is_cjk(texts: Sequence[str]) -> bool:
    return any(_CJK.search(t) for t in texts)


def bleu(predictions: Sequence[str], references: References) -> float:
    """Corpus BLEU (0-100) by `sacrebleu.corpus_bleu` (tokenizer 13a, or "zh" for CJK text)."""
    import sacrebleu

    refs = _reference_lists(predictions, references)
    tokenize = "zh" if _is_cjk([*predictions, *(r for rs in refs for r in rs)]) else "13a"
    return float(
        sacrebleu.corpus_bleu(list(predictions), _by_position(refs), tokenize=tokenize).score
    )


def chrf(predictions: Sequence[str], references: References) -> float:
    """Corpus chrF (0-100) by `sacrebleu.corpus_chrf` (character 6-grams, beta = 2)."""
    import sacrebleu

    refs = _reference_lists(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), _by_position(refs)).score)


class _CJKTokenizer:
    """rouge-score tokenizer for CJK text: each CJK character is a token, other runs of letters
    and digits are lowercased words."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(rf"{_CJK.pattern}|[^\W_]+", text.lower())


def rouge(predictions: Sequence[str], references: References) -> dict[str, float]:
    """ROUGE-1/2/L (0-100): the mean over examples of `rouge_score`'s F-measure (stemmed),
    each prediction against its best reference (rouge-score's `score_multi`)."""
    from rouge_score import rouge_scorer

    refs = _reference_lists(predictions, references)
    types = ["rouge1", "rouge2", "rougeL"]
    cjk = _is_cjk([*predictions, *(r for rs in refs for r in rs)])
    scorer = rouge_scorer.RougeScorer(
        types, use_stemmer=not cjk, tokenizer=_CJKTokenizer() if cjk else None
    )
    totals = dict.fromkeys(types, 0.0)
    for pred, rs in zip(predictions, refs, strict=True):
        scores = scorer.score_multi(rs, pred)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * totals[t] / len(refs) for t in types}


def generation_scores(predictions: Sequence[str], references: References) -> dict[str, Any]:
    """Every generation metric at once (JSON-ready): bleu, chrf, rouge1, rouge2, rougeL,
    exact_match, f1 (all 0-100) and n."""
    return {
        "bleu": bleu(predictions, references),
        "chrf": chrf(predictions, references),
        **rouge(predictions, references),
        "exact_match": exact_match(predictions, references),
        "f1": token_f1(predictions, references),
        "n": len(predictions),
    }
