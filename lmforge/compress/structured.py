"""Structured pruning: remove whole FFN neurons and attention heads, so the matrices shrink.

A block keeps the FFN neurons J and the attention heads K it is given; its weights become

    MLP:        W_1 <- W_1[J, :], b_1 <- b_1[J] (and W_3 for a GLU),   W_2 <- W_2[:, J]
    attention:  W_Q <- rows of the kept query heads, W_K, W_V <- rows of the kept key/value
                heads, W_O <- columns of the kept query heads

which computes exactly what the unpruned block computes with the removed neurons' activations
and the removed heads' outputs set to zero. Grouped-query attention is pruned by group: a
key/value head goes together with the n_head / n_kv_head query heads that read it.

Importance scores (higher = keep):

    magnitude, neuron j:  s_j = ||[W_1; W_3][j, :]||_2 * ||W_2[:, j]||_2
    magnitude, head h:    s_h = ||W_Q[h]||_F * ||W_O[:, h]||_F
    gradient (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): a gate xi = 1
                          multiplies each head's output (and each neuron's activation);
                          I_h = sum over examples x of |dL(x) / d xi_h|
    a key/value group:    the sum of its query heads' scores

The pruned model gets per-block sizes in its config (`layer_d_ff`, `layer_n_head`,
`layer_n_kv_head`) and is a normal model dir: every verb loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models import Transformer
from lmforge.models.io import load_state_dict, state_dict_for_saving

Importance = Literal["magnitude", "gradient"]
Scope = Literal["layer", "global"]


def _stack(model: Transformer) -> tuple[str, nn.Module]:
    if model.cfg.arch == "encoder-decoder":
        raise ConfigError(
            "structured pruning supports encoder and decoder models; this one is an "
            "encoder-decoder."
        )
    name = "encoder" if model.cfg.arch == "encoder" else "decoder"
    return name, getattr(model, name)


# ----------------------------------------------------------------------------- scores
@torch.no_grad()
def magnitude_scores(model: Transformer) -> tuple[list[Tensor], list[Tensor]]:
    """Per block: (neuron scores (d_ff_i,), query-head scores (n_head_i,)) by weight norms
    (see the module docstring)."""
    _, stack = _stack(model)
    neurons, heads = [], []
    for block in stack.layers:
        mlp, attn = block.mlp, block.attn
        w_in = mlp.up_proj.weight.float().pow(2).sum(1)
        if mlp.gated:
            w_in = w_in + mlp.gate_proj.weight.float().pow(2).sum(1)
        neurons.append(w_in.sqrt() * mlp.down_proj.weight.float().norm(dim=0))
        hd = attn.head_dim
        q = attn.q_proj.weight.float().view(attn.n_head, hd, -1).pow(2).sum((1, 2)).sqrt()
        o = attn.o_proj.weight.float().view(-1, attn.n_head, hd).pow(2).sum((0, 2)).sqrt()
        heads.append(q * o)
    return neurons, heads


class _Gates:
    """Forward pre-hooks that multiply each head's output (input of o_proj) and each neuron's
    activation (input of down_proj) by a per-example gate xi = 1 that requires grad."""

    def __init__(self, stack: nn.Module) -> None:
        self.heads: list[list[Tensor]] = [[] for _ in stack.layers]
        self.neurons: list[list[Tensor]] = [[] for _ in stack.layers]
        self.handles = []
        for i, block in enumerate(stack.layers):
            attn = block.attn
            self.handles.append(
                attn.o_proj.register_forward_pre_hook(self._head_hook(i, attn.n_head))
            )
            self.handles.append(block.mlp.down_proj.register_forward_pre_hook(self._neuron_hook(i)))

    def _head_hook(self, i: int, n_head: int):
        def hook(_module, args):
            x = args[0]  # (B, T, H * hd)
            b, t, _ = x.shape
            gate = torch.ones(b, n_head, dtype=x.dtype, device=x.device, requires_grad=True)
            self.heads[i].append(gate)
            return (x.view(b, t, n_head, -1) * gate[:, None, :, None]).view(b, t, -1)

        return hook

    def _neuron_hook(self, i: int):
        def hook(_module, args):
            x = args[0]  # (B, T, d_ff)
            gate = torch.ones(x.size(0), x.size(-1), dtype=x.dtype, device=x.device)
            gate.requires_grad_(True)
            self.neurons[i].append(gate)
            return (x * gate[:, None, :],)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def gradient_scores(
    model: Transformer,
    batches: Iterable[dict[str, Tensor]],
    loss_fn: Callable[[nn.Module, dict[str, Tensor]], object],
    max_batches: int | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per block: (neuron scores, query-head scores) I = sum_x |dL(x) / d xi| (Michel et al.
    2019), the gates xi = 1 on every head output and neuron activation.

    Args:
        model: the model to score (left unchanged; it runs in eval mode, no dropout).
        batches: batches of the task's data, as `loss_fn` takes them.
        loss_fn: (model, batch) -> a loss tensor or an object with `.loss` (an lmforge
            objective); the mean over the batch's examples.
        max_batches: stop after this many batches.
    """
    _, stack = _stack(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gates = _Gates(stack)
    heads = [torch.zeros(b.attn.n_head, device=device) for b in stack.layers]
    neurons = [torch.zeros(b.mlp.down_proj.in_features, device=device) for b in stack.layers]
    seen = 0
    try:
        with torch.enable_grad():
            for n, batch in enumerate(batches):
                if max_batches is not None and n >= max_batches:
                    break
                batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                out = loss_fn(model, batch)
                loss = getattr(out, "loss", out)
                flat = [g for per in gates.heads + gates.neurons for g in per]
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
                by_gate = {id(g): gr for g, gr in zip(flat, grads, strict=True)}
                for scores, per_layer in ((heads, gates.heads), (neurons, gates.neurons)):
                    for i, per in enumerate(per_layer):
                        for g in per:
                            gr = by_gate[id(g)]
                            if gr is not None:  # x its batch size: |dL(x)/dxi| per example
                                scores[i] += gr.float().abs().sum(0) * gr.size(0)
                        per.clear()
                seen += 1
    finally:
        gates.remove()
        model.train(was_training)
    if seen == 0:
        raise ConfigError("gradient importance needs at least one batch of data; none was given.")
    return neurons, heads


def group_scores(head_scores: Tensor, n_kv_head: int) -> Tensor:
    """(n_head,) query-head scores -> (n_kv_head,): the sum over each key/value group."""
    return head_scores.view(n_kv_head, -1).sum(1)


# ----------------------------------------------------------------------------- selection
def keep_counts(sizes: list[int], fraction: float) -> list[int]:
    """Units each block keeps when `fraction` of them is removed: max(1, round((1 - f) n))."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"a pruning fraction must be in [0, 1) (the share of neurons or heads removed; every "
            f"layer keeps at least one), got {fraction}; pass e.g. 0.5."
        )
    return [max(1, round((1.0 - fraction) * n)) for n in sizes]


def select(
    scores: list[Tensor], counts: list[int], scope: Scope = "layer", normalize: bool = True
) -> list[Tensor]:
    """Indices (sorted) of the units each block keeps: its `counts[i]` best by score
    ("layer"), or the sum(counts) best over all blocks with at least one per block ("global",
    scores first divided by their block's L2 norm when `normalize`, as Michel et al. do)."""
    if scope == "layer":
        return [
            torch.sort(torch.topk(s, min(c, s.numel())).indices).values
            for s, c in zip(scores, counts, strict=True)
        ]
    if scope != "global":
        raise ConfigError(f"scope must be 'layer' or 'global', got '{scope}'.")
    scaled = [s / s.norm().clamp_min(1e-12) if normalize else s for s in scores]
    best = [torch.argmax(s) for s in scaled]  # every block keeps its best unit
    flat = torch.cat(scaled).clone()
    offsets = [0]
    for s in scaled:
        offsets.append(offsets[-1] + s.numel())
    for i, b in enumerate(best):
        flat[offsets[i] + b] = float("inf")
    top = torch.topk(flat, min(sum(counts), flat.numel())).indices
    return [
        torch.sort(top[(top >= offsets[i]) & (top < offsets[i + 1])] - offsets[i]).values
        for i in range(len(scores))
    ]


# ----------------------------------------------------------------------------- shrinking
def shrink(
    model: Transformer,
    neurons: list[Tensor] | None = None,
    kv_groups: list[Tensor] | None = None,
) -> Transformer:
    """A new, smaller model keeping, per block, the FFN neurons `neurons[i]` and the key/value
    groups `kv_groups[i]` (with their query heads); None keeps everything of that kind.

    The new config records the per-block sizes; tied embeddings and heads carry over."""
    cfg = model.cfg
    stack_name, stack = _stack(model)
    state = state_dict_for_saving(model)
    d_ff, n_head, n_kv = cfg.layer_ffn, cfg.layer_heads, cfg.layer_kv_heads
    for i, block in enumerate(stack.layers):
        p = f"{stack_name}.layers.{i}."
        if neurons is not None:
            keep = neurons[i].to(torch.long).cpu()
            for name in ("up_proj", "gate_proj"):
                for part in ("weight", "bias"):
                    key = f"{p}mlp.{name}.{part}"
                    if key in state:
                        state[key] = state[key][keep]
            key = f"{p}mlp.down_proj.weight"
            state[key] = state[key][:, keep]
            d_ff[i] = int(keep.numel())
        if kv_groups is not None:
            attn = block.attn
            hd, group = attn.head_dim, attn.n_head // attn.n_kv_head
            kv = kv_groups[i].to(torch.long).cpu()
            q_heads = (kv[:, None] * group + torch.arange(group)).flatten()
            q_rows = (q_heads[:, None] * hd + torch.arange(hd)).flatten()
            kv_rows = (kv[:, None] * hd + torch.arange(hd)).flatten()
            for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
                for part in ("weight", "bias"):
                    key = f"{p}attn.{name}.{part}"
                    if key in state:
                        state[key] = state[key][rows]
            key = f"{p}attn.o_proj.weight"
            state[key] = state[key][:, q_rows]
            n_head[i], n_kv[i] = int(q_heads.numel()), int(kv.numel())
    new_cfg = cfg.replace(layer_d_ff=d_ff, layer_n_head=n_head, layer_n_kv_head=n_kv)
    p0 = next(model.parameters())
    pruned = Transformer(new_cfg)
    load_state_dict(pruned, state, "the pruned weights")
    return pruned.to(device=p0.device, dtype=p0.dtype).train(model.training)


def structured_prune(
    model: Transformer,
    ffn_fraction: float = 0.0,
    head_fraction: float = 0.0,
    *,
    importance: Importance = "magnitude",
    scope: Scope = "layer",
    reference: ModelConfig | None = None,
    batches: Iterable[dict[str, Tensor]] | None = None,
    loss_fn: Callable | None = None,
    max_batches: int | None = None,
) -> Transformer:
    """Remove `ffn_fraction` of the FFN neurons and `head_fraction` of the attention heads
    (whole key/value groups) by importance; returns the smaller model.

    Args:
        model: an encoder or decoder Transformer.
        ffn_fraction, head_fraction: fractions to remove, of the sizes in `reference` (default:
            the model's own), so an iterative schedule can name its targets on the original.
        importance: "magnitude" (weight norms) or "gradient" (Michel et al.; needs `batches`
            and `loss_fn`).
        scope: "layer" (every block loses the same fraction) or "global" (one ranking).
        batches, loss_fn, max_batches: data for gradient importance (see `gradient_scores`).
    """
    reference = reference or model.cfg
    if importance == "gradient":
        if batches is None or loss_fn is None:
            raise ConfigError("gradient importance needs data: pass batches and a loss_fn.")
        neuron_s, head_s = gradient_scores(model, batches, loss_fn, max_batches)
    elif importance == "magnitude":
        neuron_s, head_s = magnitude_scores(model)
    else:
        raise ConfigError(f"importance must be 'magnitude' or 'gradient', got '{importance}'.")
    neurons = groups = None
    if ffn_fraction > 0:
        counts = keep_counts(reference.layer_ffn, ffn_fraction)
        neurons = select(neuron_s, counts, scope)
    if head_fraction > 0:
        _, stack = _stack(model)
        kv = [group_scores(s, b.attn.n_kv_head) for s, b in zip(head_s, stack.layers, strict=True)]
        groups = select(kv, keep_counts(reference.layer_kv_heads, head_fraction), scope)
    return shrink(model, neurons, groups)
