"""Evaluation: perplexity of language models, classification/tagging metrics, reports."""

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
    "classification_report",
    "confusion_matrix",
    "entity_f1",
    "entity_scores",
    "macro_f1",
    "per_class",
    "perplexity",
]
