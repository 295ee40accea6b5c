"""Prompt learning without training: cloze templates, verbalizers, few-shot demonstrations and
contextual calibration for zero/few-shot text classification.

Example:
    >>> from lmforge.prompting import prompt_classify
    >>> r = prompt_classify("runs/bert", "reviews.jsonl", "Review: {text} It was [MASK].",
    ...                     ["positive=great,good", "negative=terrible"], shots=4, calibrated=True)
    >>> r.accuracy, r.predictions[0].probs
"""

from lmforge.prompting.classify import (
    CONTENT_FREE,
    Prediction,
    PromptResult,
    classify,
    prompt_classify,
)
from lmforge.prompting.examples import Example, draw_demonstrations, read_examples
from lmforge.prompting.scoring import (
    LabelScorer,
    calibrate,
    content_free_probs,
    label_log_scores,
    scoring_mode,
)
from lmforge.prompting.template import Template, Verbalizer

__all__ = [
    "CONTENT_FREE",
    "Example",
    "LabelScorer",
    "Prediction",
    "PromptResult",
    "Template",
    "Verbalizer",
    "calibrate",
    "classify",
    "content_free_probs",
    "draw_demonstrations",
    "label_log_scores",
    "prompt_classify",
    "read_examples",
    "scoring_mode",
]
