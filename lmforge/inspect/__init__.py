"""Interpretability: named hook points, run_with_cache, attention maps and rollout, logit lens,
direct logit attribution, activation patching, saliency, and their HTML/PNG views."""

from lmforge.inspect.attention import attention_patterns, attention_rollout
from lmforge.inspect.hooks import (
    ActivationCache,
    InspectError,
    hook_points,
    hooks,
    run_with_cache,
)
from lmforge.inspect.lens import direct_logit_attribution, logit_lens
from lmforge.inspect.patching import activation_patching
from lmforge.inspect.saliency import class_score, saliency, token_score

__all__ = [
    "ActivationCache",
    "InspectError",
    "activation_patching",
    "attention_patterns",
    "attention_rollout",
    "class_score",
    "direct_logit_attribution",
    "hook_points",
    "hooks",
    "logit_lens",
    "run_with_cache",
    "saliency",
    "token_score",
]
