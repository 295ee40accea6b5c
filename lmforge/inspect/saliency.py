"""Saliency per input token: gradient x input and integrated gradients on the token embeddings.

With e the token embeddings of the input (the `embed` hook point), e' a baseline (zeros) and f
the score of the class (or label word) of interest:

    gradient x input:      a_t = sum_d  e_td * df/de_td
    integrated gradients:  a_t = sum_d (e_td - e'_td) * int_0^1 df/de_td (e' + alpha (e - e')) dalpha

(Sundararajan et al., 2017), the integral by m-point Gauss-Legendre quadrature on [0, 1].
Integrated gradients are complete: sum_t a_t = f(e) - f(e') up to the quadrature error.
Positions, token types and the embedding norm are kept as they are; only the token embeddings
move along the path, as in captum's LayerIntegratedGradients on the word embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.inspect.hooks import InspectError, hooks

ScoreFn = Callable[[Tensor], Tensor]  # the model's logits (B, ...) -> (B,) score


def class_score(label: int) -> ScoreFn:
    """The classifier's logit of class `label` ((B, num_labels) logits)."""
    return lambda logits: logits[:, label]


def token_score(token: int | list[int], position: int = -1) -> ScoreFn:
    """log P(token at `position`) from LM or MLM logits (B, T, V); with a list of tokens (a
    verbalizer's words for one label), log sum_w P(w) as the cloze scorer uses it."""
    ids = [token] if isinstance(token, int) else list(token)

    def score(logits: Tensor) -> Tensor:
        logp = torch.log_softmax(logits[:, position].float(), dim=-1)
        return torch.logsumexp(logp[:, ids], dim=-1)

    return score


@dataclass
class Saliency:
    """Attributes:
    scores: (T,) attribution per input token.
    method: "grad_x_input" or "integrated_gradients".
    f_input, f_baseline: the score at the input and at the baseline.
    delta: sum(scores) - (f_input - f_baseline) (integrated gradients' completeness gap).
    """

    scores: Tensor
    method: str
    f_input: float
    f_baseline: float
    delta: float


def _forward_score(
    model: nn.Module, ids: Tensor, emb: Tensor, score: ScoreFn, kwargs: dict
) -> Tensor:
    with hooks(model, {"embed": lambda _e, _n: emb}):
        logits = model(ids.expand(emb.size(0), -1), **kwargs).logits
    return score(logits)


def saliency(
    model: nn.Module,
    input_ids: Tensor,
    score: ScoreFn,
    *,
    method: str = "integrated_gradients",
    steps: int = 64,
    baseline: Tensor | None = None,
    batch_size: int = 16,
    **forward_kwargs,
) -> Saliency:
    """Attribution of `score` to each token of one input row (formulas in the module docstring).

    Args:
        model: a `Transformer` in eval mode (LoRA or frozen parameters are fine: only the
            embeddings take gradients).
        input_ids: (1, T) ids.
        score: logits -> (B,) scores, e.g. `class_score(label)` or `token_score(id)`.
        method: "integrated_gradients" or "grad_x_input".
        steps: quadrature points of integrated gradients.
        baseline: (T, d) baseline embeddings; zeros by default.
        batch_size: interpolation points per forward.
        forward_kwargs: passed to the forward (attention_mask, token_type_ids, ...).
    """
    if input_ids.dim() != 2 or input_ids.size(0) != 1:
        raise InspectError("saliency explains one input at a time; pass ids of shape (1, T).")
    if method not in ("integrated_gradients", "grad_x_input"):
        raise InspectError(
            f"unknown saliency method '{method}'; use integrated_gradients or grad_x_input."
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            looked_up = model.embed.tok(input_ids)[0]  # (T, d)
            emb = looked_up.float()
            base = torch.zeros_like(emb) if baseline is None else baseline.float()
            dtype = looked_up.dtype  # the lookup's, not the table's (int8 tables give floats)
            f_in = float(
                _forward_score(model, input_ids, emb[None].to(dtype), score, forward_kwargs)[0]
            )
            f_base = float(
                _forward_score(model, input_ids, base[None].to(dtype), score, forward_kwargs)[0]
            )
        if method == "grad_x_input":
            x = emb[None].clone().requires_grad_(True)
            with torch.enable_grad():
                s = _forward_score(model, input_ids, x.to(dtype), score, forward_kwargs)
                (grad,) = torch.autograd.grad(s.sum(), x)
            attr = (grad[0] * emb).sum(-1)
            return Saliency(
                attr.detach(), method, f_in, f_base, float(attr.sum()) - (f_in - f_base)
            )
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float32)  # on [0, 1]
        w = torch.tensor(weights / 2, dtype=torch.float32)  # they sum to 1
        total = torch.zeros_like(emb)
        for start in range(0, steps, batch_size):
            a = alphas[start : start + batch_size, None, None]
            path = (base + a * (emb - base)).requires_grad_(True)  # (b, T, d)
            with torch.enable_grad():
                s = _forward_score(model, input_ids, path.to(dtype), score, forward_kwargs)
                (grad,) = torch.autograd.grad(s.sum(), path)
            total += (grad * w[start : start + batch_size, None, None]).sum(0)
        attr = ((emb - base) * total).sum(-1)  # (T,)
        delta = float(attr.sum()) - (f_in - f_base)
        return Saliency(attr.detach(), method, f_in, f_base, delta)
    finally:
        model.train(was_training)
