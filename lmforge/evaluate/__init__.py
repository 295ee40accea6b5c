"""Evaluation: perplexity of language models (later: accuracy/F1, generation metrics, reports)."""

from lmforge.evaluate.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
