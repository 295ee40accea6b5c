"""Generation metrics equal the reference packages (sacrebleu, rouge-score) on the same strings;
exact match and F1 follow SQuAD's normalisation."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lmforge.evaluate.gen_metrics import (
    bleu,
    chrf,
    exact_match,
    generation_scores,
    normalize_answer,
    rouge,
    token_f1,
    token_f1_one,
)

PREDS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "Paris is the capital of France",
    "nothing in common",
]
REFS = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumped over the lazy dogs.",
    "The capital of France is Paris.",
    "totally different words here",
]


def test_bleu_and_chrf_equal_sacrebleu():
    assert bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert chrf(PREDS, REFS) == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    assert 0 < bleu(PREDS, REFS) < 100


def test_bleu_with_several_references_equals_sacrebleu():
    refs = [[r, r.upper()] for r in REFS]
    other = [r.upper() for r in REFS]
    assert bleu(PREDS, refs) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS, other]).score)


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = rouge(PREDS, REFS)
    for key in ("rouge1", "rouge2", "rougeL"):
        want = sum(
            scorer.score(r, p)[key].fmeasure for p, r in zip(PREDS, REFS, strict=True)
        ) / len(PREDS)
        assert ours[key] == pytest.approx(100 * want)
    assert ours["rouge1"] > ours["rouge2"] > 0


def test_rouge_scores_chinese_per_character():
    # rouge-score's own tokenizer drops every non-ASCII character, which scores Chinese as 0
    assert rouge(["北京是中国的首都"], ["中国的首都是北京"])["rouge1"] == pytest.approx(100.0)
    assert 0 < rouge(["今天天气很好"], ["今天下雨"])["rouge1"] < 100


def test_squad_normalisation_and_scores():
    assert normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert exact_match(["the Eiffel Tower"], [["Eiffel Tower."]]) == 100.0
    assert exact_match(["Eiffel"], ["Eiffel Tower"]) == 0.0
    # P = 1/1, R = 1/2 -> F1 = 2/3
    assert token_f1_one("Eiffel", "the Eiffel Tower") == pytest.approx(2 / 3)
    # best of several references; then the mean over examples
    assert token_f1(["Eiffel", "blue"], [["Tower", "Eiffel"], ["red"]]) == pytest.approx(50.0)
    # SQuAD v2: an empty prediction matches an empty (no-answer) reference only
    assert token_f1_one("", "") == 1.0 and token_f1_one("x", "") == 0.0
    assert token_f1_one("北京", "北京市") == pytest.approx(0.8)


def test_generation_scores_and_bad_input():
    scores = generation_scores(PREDS, REFS)
    assert set(scores) == {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "f1", "n"}
    with pytest.raises(ValueError, match="one reference"):
        bleu(PREDS, REFS[:2])
    with pytest.raises(ValueError, match="no predictions"):
        exact_match([], [])
