"""Logit lens and direct logit attribution, with the model's own final norm and unembedding.

Logit lens (nostalgebraist, 2020): read the residual stream after every block as if it were the
last one,

    lens_l = Head(FinalNorm(resid_post_l))      l = -1 (the embeddings), 0 .. L-1

where Head is the model's own head (tied or untied LM head with its logit scale, the MLM head,
or even a classifier's head). At l = L-1 this is exactly the model's logits.

Direct logit attribution: in a pre-norm model the final residual is a sum of parts,
resid = embed + sum_l (attn_l + mlp_l), and attn_l = sum_h z_h W^O_h + b^O. Holding the final
norm's scale fixed (sigma of the whole residual at that position), the norm is linear:

    LayerNorm: N(c) = (c - mean(c)) / sigma * g        (its bias b is a part of its own)
    RMSNorm:   N(c) = c / rms * g

so logit(token) = sum_parts U[token] . N(part) (+ U[token] . b): every head, every MLP and the
embeddings get a share of the logit that adds up to it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmforge.inspect.attention import default_stack
from lmforge.inspect.hooks import InspectError, run_with_cache


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    stack = getattr(model, default_stack(model))
    return stack, stack.norm


def _head_logits(model: nn.Module, h: Tensor, attention_mask: Tensor | None) -> Tensor:
    return model.heads(h, attention_mask).logits


@dataclass
class LensResult:
    """Attributes:
    logits: (L + 1, B, T, V) (or (L + 1, B, V) for a pooled classifier head): row 0 reads the
        embeddings, row l + 1 the output of block l.
    layer_names: "embed", "0", ..., "L-1".
    """

    logits: Tensor
    layer_names: list[str] = field(default_factory=list)


@torch.no_grad()
def logit_lens(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, **forward_kwargs
) -> LensResult:
    """Decode the residual stream after every block with the model's final norm and head.

    Args:
        model: a decoder or encoder `Transformer` (an encoder-decoder: its decoder is not
            supported here; pass the decoder-only or encoder-only model).
        input_ids: (B, T) ids.
        attention_mask: (B, T) 1/0, for padded batches.
        forward_kwargs: passed to the forward (token_type_ids, ...).

    Returns:
        a `LensResult` (see there); for a pre-norm model the last row equals the model's logits.
    """
    if model.cfg.arch == "encoder-decoder":
        raise InspectError(
            "the logit lens reads one stack; run it on a decoder-only or encoder-only model."
        )
    if getattr(model, "prompt", None) is not None:
        raise InspectError("the logit lens does not read soft-prompted models; drop the prompt.")
    stack, norm = _parts(model)
    out, cache = run_with_cache(
        model,
        input_ids,
        attention_mask,
        names=["blocks.0.resid_pre", "blocks.*.resid_post"],
        **forward_kwargs,
    )
    n = len(stack.layers)
    rows = [cache["blocks.0.resid_pre"]] + [cache[f"blocks.{i}.resid_post"] for i in range(n)]
    logits = []
    for h in rows:
        if norm is not None:
            h = norm(h)
        logits.append(_head_logits(model, h, attention_mask).float())
    del out
    return LensResult(torch.stack(logits), ["embed"] + [str(i) for i in range(n)])


def lens_top_tokens(
    lens: LensResult, k: int = 5, row: int = 0
) -> list[list[list[tuple[int, float]]]]:
    """Per layer and position: the top-k (token id, probability) of batch row `row`."""
    probs = torch.softmax(lens.logits[:, row], dim=-1)  # (L + 1, T, V)
    top = probs.topk(k, dim=-1)
    return [
        [list(zip(ids, ps, strict=True)) for ids, ps in zip(li, lp, strict=True)]
        for li, lp in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]


@dataclass
class Attribution:
    """Direct logit attribution at one position.

    Attributes:
        names: part names ("embed", "L{layer}H{head}", "L{layer} attn bias", "L{layer} mlp", "final norm bias").
        values: (n_parts,) their shares of the metric; they sum to `total`.
        total: the metric from the model's own logits (logit of `token`, or the difference
            logit(token) - logit(other)).
    """

    names: list[str]
    values: Tensor
    total: float

    def per_head(self, n_layer: int, n_head: int) -> Tensor:
        """(n_layer, n_head) grid of the head shares."""
        index = {name: i for i, name in enumerate(self.names)}
        return torch.tensor(
            [
                [float(self.values[index[f"L{ly}H{h}"]]) for h in range(n_head)]
                for ly in range(n_layer)
            ]
        )


@torch.no_grad()
def direct_logit_attribution(
    model: nn.Module,
    input_ids: Tensor,
    token: int,
    *,
    other: int | None = None,
    position: int = -1,
) -> Attribution:
    """Split logit(token) (or logit(token) - logit(other)) at `position` of row 0 into the
    direct contributions of the embeddings, every attention head, every attention bias, every MLP
    and the final norm's bias (formula in the module docstring).

    Needs a pre-norm model with a final norm (GPT-2, Llama, T5 decoders): in a post-norm model
    every block renormalises the stream and no such sum exists.
    """
    cfg = model.cfg
    stack, norm = _parts(model)
    if cfg.norm_placement != "pre" or norm is None or cfg.arch == "encoder-decoder":
        raise InspectError(
            "direct logit attribution needs a pre-norm model with a final norm (GPT-2, Llama); "
            "this one renormalises inside every block, use the logit lens or patching instead."
        )
    if "lm" not in cfg.heads:
        raise InspectError("direct logit attribution reads an LM head; this model has none.")
    ids = input_ids[:1]
    out, cache = run_with_cache(
        model,
        ids,
        names=["blocks.0.resid_pre", "blocks.*.attn.z", "blocks.*.mlp.out", "blocks.*.resid_post"],
    )
    n = len(stack.layers)
    resid = cache[f"blocks.{n - 1}.resid_post"][0, position].float()  # (d,)
    layer_norm = isinstance(norm, nn.LayerNorm)
    if layer_norm:
        sigma = torch.sqrt(resid.var(unbiased=False) + norm.eps)
    else:
        sigma = torch.sqrt(resid.pow(2).mean() + norm.eps)
    gain = norm.weight.float()
    names, parts = ["embed"], [cache["blocks.0.resid_pre"][0, position].float()]
    for ly in range(n):
        attn = stack.layers[ly].attn
        z = cache[f"blocks.{ly}.attn.z"][0, position]  # (H, hd)
        zero = torch.zeros_like(z)
        base = attn.o_proj(zero.flatten()[None]).float()[0]  # the bias b^O (zeros if none)
        for h in range(attn.n_head):
            only = zero.clone()
            only[h] = z[h]
            names.append(f"L{ly}H{h}")
            parts.append(attn.o_proj(only.flatten()[None]).float()[0] - base)
        names.append(f"L{ly} attn bias")
        parts.append(base)
        names.append(f"L{ly} mlp")
        parts.append(cache[f"blocks.{ly}.mlp.out"][0, position].float())
    stacked = torch.stack(parts)  # (n_parts, d)
    if layer_norm:
        stacked = stacked - stacked.mean(dim=-1, keepdim=True)
    normed = stacked / sigma * gain  # (n_parts, d)
    if layer_norm and norm.bias is not None:
        names.append("final norm bias")
        normed = torch.cat([normed, norm.bias.float()[None]])
    heads = model.heads
    dtype = next(heads.lm_head.parameters()).dtype
    vocab = heads.lm_head((normed * heads.logit_scale).to(dtype)).float()  # (n_parts, V)
    values = vocab[:, token] - (vocab[:, other] if other is not None else 0.0)
    logits = out.logits[0, position].float()
    total = logits[token] - (logits[other] if other is not None else 0.0)
    return Attribution(names, values, float(total))
