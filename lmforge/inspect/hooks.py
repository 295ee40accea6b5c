"""Named hook points on the one core: read (`run_with_cache`) or edit (`hooks`) any activation.

Names are the same for every family (GPT-2, Llama, BERT, T5); a model with one stack uses
`blocks.{i}.*`, an encoder-decoder `encoder.blocks.{i}.*` and `decoder.blocks.{i}.*`:

    embed                      (B, T, d)      token embeddings W_E[x] (before positions, scale, norm)
    blocks.{i}.resid_pre       (B, T, d)      residual stream entering block i
    blocks.{i}.attn.q|k|v      (B, T, H, hd)  projections, before RoPE (k, v have H_kv heads)
    blocks.{i}.attn.pattern    (B, H, T, Tk)  softmax(q k^T * scale + mask) (forces the math path)
    blocks.{i}.attn.z          (B, T, H, hd)  per-head attention output, before W^O
    blocks.{i}.attn.out        (B, T, d)      attention output after W^O (what is added)
    blocks.{i}.resid_mid       (B, T, d)      residual stream between attention and MLP
    blocks.{i}.mlp.pre         (B, T, d_ff)   pre-activation (the gate's for a gated MLP)
    blocks.{i}.mlp.post        (B, T, d_ff)   act(pre) (* up for a gated MLP), input of W_2
    blocks.{i}.mlp.out         (B, T, d)      MLP output (what is added)
    blocks.{i}.resid_post      (B, T, d)      residual stream leaving block i
    final_norm                 (B, T, d)      the stack's final norm (pre-norm models)
    logits                     model logits   the main head's output

A hook is `fn(activation, name) -> Tensor | None`: return a tensor to replace the activation,
None to keep it. Hooks are PyTorch module hooks on existing submodules (or on the identity
`HookPoint`s inside blocks and attention) registered only inside `hooks(...)`/`run_with_cache`,
so a model without hooks runs exactly the forward it always runs. The modules are looked up when
the hooks are registered, so LoRA and quantized linears (module swaps) are hooked the same way.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import LmforgeError, did_you_mean

HookFn = Callable[[Tensor, str], Tensor | None]
Names = Iterable[str] | Callable[[str], bool] | str | None


class InspectError(LmforgeError):
    """An interpretability request cannot be carried out as asked."""


@dataclass(frozen=True)
class HookSpec:
    """Where a named activation lives.

    module: the submodule; where: "out" (its output), "out0" (first item of a tuple output),
    "in" (its first positional input), "logits" (a `ModelOutput`'s logits); heads: the number
    of heads to split the last dim into ((B, T, n*hd) <-> (B, T, n, hd)), 0 for none.
    """

    module: nn.Module
    where: str
    heads: int = 0


def _stack_points(prefix: str, stack: nn.Module) -> dict[str, HookSpec]:
    points: dict[str, HookSpec] = {}
    for i, block in enumerate(stack.layers):
        p = f"{prefix}blocks.{i}."
        attn, mlp = block.attn, block.mlp
        points[p + "resid_pre"] = HookSpec(block, "in")
        points[p + "attn.q"] = HookSpec(attn.q_proj, "out", attn.n_head)
        points[p + "attn.k"] = HookSpec(attn.k_proj, "out", attn.n_kv_head)
        points[p + "attn.v"] = HookSpec(attn.v_proj, "out", attn.n_kv_head)
        if hasattr(attn, "hook_pattern"):
            points[p + "attn.pattern"] = HookSpec(attn.hook_pattern, "out")
        points[p + "attn.z"] = HookSpec(attn.o_proj, "in", attn.n_head)
        points[p + "attn.out"] = HookSpec(attn, "out0")
        if hasattr(block, "hook_resid_mid"):
            points[p + "resid_mid"] = HookSpec(block.hook_resid_mid, "out")
        points[p + "mlp.pre"] = HookSpec(mlp.gate_proj if mlp.gated else mlp.up_proj, "out")
        points[p + "mlp.post"] = HookSpec(mlp.down_proj, "in")
        points[p + "mlp.out"] = HookSpec(mlp, "out")
        points[p + "resid_post"] = HookSpec(block, "out0")
    if stack.norm is not None:
        points[prefix + "final_norm"] = HookSpec(stack.norm, "out")
    return points


def hook_points(model: nn.Module) -> dict[str, HookSpec]:
    """Every named hook point of a `Transformer`, in forward order (see the module docstring)."""
    points = {"embed": HookSpec(model.embed.tok, "out")}
    arch = model.cfg.arch
    if arch == "encoder-decoder":
        points |= _stack_points("encoder.", model.encoder)
        points |= _stack_points("decoder.", model.decoder)
    else:
        points |= _stack_points("", model.encoder if arch == "encoder" else model.decoder)
    points["logits"] = HookSpec(model.heads, "logits")
    return points


def select_names(model: nn.Module, names: Names) -> list[str]:
    """The hook-point names matched by `names`: None (all), a name, glob patterns
    ("blocks.*.attn.z") or a predicate; an unknown name is an `InspectError`."""
    points = hook_points(model)
    if names is None:
        return list(points)
    if callable(names):
        return [n for n in points if names(n)]
    if isinstance(names, str):
        names = [names]
    chosen: list[str] = []
    for pattern in names:
        hits = [n for n in points if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise InspectError(
                f"no hook point is called '{pattern}'{did_you_mean(pattern, points)}; "
                "`lmforge.inspect.hook_points(model)` lists them."
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _split(t: Tensor, heads: int) -> Tensor:
    return t.unflatten(-1, (heads, -1)) if heads else t  # (B, T, n*hd) -> (B, T, n, hd)


def _merge(t: Tensor, heads: int) -> Tensor:
    return t.flatten(-2) if heads else t


def _register(spec: HookSpec, name: str, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
    """One PyTorch hook calling fn on the activation at `spec` (and putting back its answer)."""
    if spec.where == "in":

        def pre(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            new = fn(_split(args[0], spec.heads), name)
            return None if new is None else (_merge(new, spec.heads), *args[1:])

        return spec.module.register_forward_pre_hook(pre)

    def post(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if spec.where == "out0":
            new = fn(out[0], name)
            return None if new is None else (new, *out[1:])
        if spec.where == "logits":
            new = fn(out.logits, name)
            if new is not None:
                out.logits = new
            return None
        new = fn(_split(out, spec.heads), name)
        return None if new is None else _merge(new, spec.heads)

    return spec.module.register_forward_hook(post)


@contextlib.contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn | list[HookFn]]) -> Iterator[None]:
    """Run `model` with hook functions at named points; they are removed on exit.

    `fns` maps a name (or a glob pattern such as "blocks.*.attn.z") to `fn(activation, name)`
    or a list of them (run in order). A hook returns a replacement tensor or None.

    Example: zero head 3 of block 1::

        def ablate(z, name):
            z = z.clone(); z[:, :, 3] = 0; return z
        with hooks(model, {"blocks.1.attn.z": ablate}):
            logits = model(ids).logits
    """
    points = hook_points(model)
    handles = []
    try:
        for pattern, fn_or_list in fns.items():
            for name in select_names(model, [pattern]):
                for fn in fn_or_list if isinstance(fn_or_list, list) else [fn_or_list]:
                    handles.append(_register(points[name], name, fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


class ActivationCache(dict):
    """name -> activation from `run_with_cache`, with helpers across layers."""

    def stack(self, suffix: str, prefix: str = "") -> Tensor:
        """Activations named `{prefix}blocks.{i}.{suffix}` for every cached i, stacked on a new
        leading layer dim: (n_layer, ...)."""
        keys = [k for k in self if k.startswith(prefix + "blocks.") and k.endswith("." + suffix)]
        keys = [k for k in keys if k[len(prefix) :].count(".") == suffix.count(".") + 2]
        if not keys:
            raise InspectError(f"nothing named '*.{suffix}' was cached; pass it in `names`.")
        keys.sort(key=lambda k: int(k[len(prefix) :].split(".")[1]))
        return torch.stack([self[k] for k in keys])


def run_with_cache(
    model: nn.Module,
    *args: Any,
    names: Names = None,
    detach: bool = True,
    **kwargs: Any,
) -> tuple[Any, ActivationCache]:
    """Run `model(*args, **kwargs)` once and keep the activations at the named hook points.

    Args:
        model: a `Transformer` (LoRA and quantized linears included).
        names: which hook points (see `select_names`); None keeps them all.
        detach: store detached tensors (set False to keep them in the autograd graph).

    Returns:
        (the model's output, an `ActivationCache` name -> tensor).
    """
    cache = ActivationCache()

    def keep(t: Tensor, name: str) -> None:
        cache[name] = t.detach() if detach else t

    with hooks(model, {name: keep for name in select_names(model, names)}):
        out = model(*args, **kwargs)
    return out, cache
