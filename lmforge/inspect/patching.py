"""Activation patching (causal tracing): which activations carry the answer?

Run a clean prompt and a corrupted one of the same length; then rerun the corrupted prompt with
one activation taken from the clean run. With the metric a logit difference at the last position,

    m(run) = logit(answer) - logit(wrong)
    score  = (m(patched) - m(corrupted)) / (m(clean) - m(corrupted))

1 means that activation alone restores the clean behaviour, 0 that it does nothing. Patching a
residual stream at every position restores the clean logits exactly (what comes after it is a
function of it alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmforge.inspect.attention import default_stack
from lmforge.inspect.hooks import InspectError, hooks, run_with_cache

SITES = ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out")


@dataclass
class PatchResult:
    """Attributes:
    scores: normalised restoration, (n_layer, T) for a per-position site, (n_layer, n_head)
        for `site="attn.z"` per head.
    metric: raw metric of each patched run, same shape.
    clean, corrupted: the metric of the two unpatched runs.
    site: the hook-point suffix patched; columns: "position" or "head".
    """

    scores: Tensor
    metric: Tensor
    clean: float
    corrupted: float
    site: str
    columns: str = "position"
    layer_names: list[str] = field(default_factory=list)


def logit_diff(logits: Tensor, answer: int, wrong: int | None) -> Tensor:
    """(B, T, V) or (B, V) logits -> (B,) logit(answer) - logit(wrong) at the last position."""
    last = logits[:, -1] if logits.dim() == 3 else logits
    last = last.float()
    return last[:, answer] - (last[:, wrong] if wrong is not None else 0.0)


@torch.no_grad()
def activation_patching(
    model: nn.Module,
    clean_ids: Tensor,
    corrupted_ids: Tensor,
    answer: int,
    wrong: int | None = None,
    *,
    site: str = "resid_pre",
    batch_size: int = 16,
) -> PatchResult:
    """Patch each layer x position (or, for site="attn.z", each layer x head over all
    positions) of the corrupted run with the clean activation; score by the logit difference.

    Args:
        model: a decoder or encoder `Transformer`.
        clean_ids, corrupted_ids: (1, T) ids of the same length.
        answer, wrong: token (or class) ids of the metric logit(answer) - logit(wrong); wrong=None
            uses logit(answer) alone.
        site: one of SITES, or "attn.z" (per head).
        batch_size: patched runs per forward.
    """
    if clean_ids.shape != corrupted_ids.shape or clean_ids.size(0) != 1:
        raise InspectError(
            f"clean and corrupted prompts must be one row each of the same length; got "
            f"{tuple(clean_ids.shape)} and {tuple(corrupted_ids.shape)} tokens, so reword the "
            "corrupted prompt to the same token count."
        )
    if site not in (*SITES, "attn.z"):
        raise InspectError(f"cannot patch '{site}'; choose one of {[*SITES, 'attn.z']}.")
    stack = getattr(model, default_stack(model))
    n_layer, t = len(stack.layers), clean_ids.size(1)
    names = [f"blocks.{i}.{site}" for i in range(n_layer)]
    clean_out, clean_cache = run_with_cache(model, clean_ids, names=names)
    m_clean = float(logit_diff(clean_out.logits, answer, wrong)[0])
    m_corrupt = float(logit_diff(model(corrupted_ids).logits, answer, wrong)[0])
    per_head = site == "attn.z"
    n_col = model.cfg.n_head if per_head else t
    metric = torch.zeros(n_layer, n_col)
    for layer in range(n_layer):
        name = names[layer]
        clean_act = clean_cache[name][0]  # (T, d) or (T, H, hd)
        for start in range(0, n_col, batch_size):
            cols = list(range(start, min(start + batch_size, n_col)))

            def patch(
                act: Tensor, _name: str, cols: list[int] = cols, clean_act: Tensor = clean_act
            ) -> Tensor:
                act = act.clone()
                for row, col in enumerate(cols):
                    if per_head:
                        act[row, :, col] = clean_act[:, col]
                    else:
                        act[row, col] = clean_act[col]
                return act

            batch = corrupted_ids.expand(len(cols), -1)
            with hooks(model, {name: patch}):
                logits = model(batch).logits
            metric[layer, start : start + len(cols)] = logit_diff(logits, answer, wrong).cpu()
    span = m_clean - m_corrupt
    scores = (metric - m_corrupt) / span if abs(span) > 1e-9 else torch.zeros_like(metric)
    return PatchResult(
        scores,
        metric,
        m_clean,
        m_corrupt,
        site,
        "head" if per_head else "position",
        [str(i) for i in range(n_layer)],
    )
