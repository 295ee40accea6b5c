"""Evaluation: perplexity of language models, classification/tagging metrics, generation metrics
(BLEU, chrF, ROUGE, exact match, F1), reports; the task harness is `lmforge.evaluate.harness`."""

from lmforge.evaluate.gen_metrics import (
    bleu,
    chrf,
    exact_match,
    generation_scores,
    normalize_answer,
    rouge,
    token_f1,
)
from lmforge.evaluate.metrics import (
    accuracy,
    bio_spans,
    classification_report,
    confusion_matrix,
    entity_f1,
    entity_scores,
    macro_f1,
    per_class,
)
from lmforge.evaluate.perplexity import PerplexityResult, perplexity

__all__ = [
    "PerplexityResult",
    "accuracy",
    "bio_spans",
    "bleu",
    "chrf",
    "classification_report",
    "confusion_matrix",
    "entity_f1",
    "entity_scores",
    "exact_match",
    "generation_scores",
    "macro_f1",
    "normalize_answer",
    "per_class",
    "perplexity",
    "rouge",
    "token_f1",
]
