"""A static decode step: one new token per row, no host checks, one graph for a whole generation.

The plain step (`decode_one_token`) runs the model's forward with a mask that grows by one
column per token and checks it on the host (`bool(mask.all())`, twice per step), and reads the
cache through 5-D select/slice chains. This step keeps every per-step quantity on the device, so
`torch.compile(fullgraph=True)` captures it as one graph (gpt-fast style):

    slot          the cache slot of the new token, a (1,) long tensor (= tokens cached so far)
    pos[b]        row b's position: the real (non-padding) tokens before the new one
    k, v          written into every layer's preallocated cache with index_copy_ at `slot`
    allowed[b, j] = keep[b, j] and j <= slot [and slot - j < window]
    mask[b, j]    = bias(slot, j) if allowed[b, j] else the dtype's minimum
    out           = softmax(q K^T * scale + mask) V over the slots 0 .. slot

`keep` (B, max_len) is False at the left-padding slots of the prompt and True elsewhere, so
padded batches need no per-step host check. The keys are views of the cache's first slot + 1
slots: their length is the only size that changes between steps, and the compiled step marks it
dynamic (one compilation for the whole generation, and no attention over unwritten slots).

Covered: decoder-only models with a non-rolling cache, the "sdpa" attention backend, learned,
sinusoidal, RoPE (not "dynamic" scaling, which reads the largest position on the host), ALiBi,
relative or no positions, an optional (non-rolling) sliding window; no soft prompt or prefix
tuning. `static_unsupported` names the first thing that rules a model out; the engine then uses
the plain step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import GenerationError
from lmforge.models.cache import KVCache
from lmforge.models.positions import apply_rope
from lmforge.models.transformer import Transformer


def static_unsupported(model: nn.Module, cache: KVCache | None = None) -> str | None:
    """Why the static step cannot run `model` (with `cache`), or None when it can."""
    if type(model) is not Transformer:
        return f"{type(model).__name__} is not lmforge's Transformer (its forward is unknown)"
    cfg = model.cfg
    if cfg.arch != "decoder":
        return f"arch={cfg.arch!r} (the static step covers decoder-only models)"
    if "lm" not in cfg.heads:
        return "no LM head"
    if getattr(model, "prompt", None) is not None:
        return "a soft prompt (prompt tuning)"
    stack = model.decoder
    if stack.prefix is not None:
        return "prefix tuning"
    if cfg.pos == "rope" and cfg.rope_scaling == "dynamic":
        return "dynamic RoPE scaling (reads the largest position on the host)"
    if cache is not None and cache.rolling:
        return "a rolling KV cache"
    for block in stack.layers:
        if block.attn.backend != "sdpa":
            return f"attention backend {block.attn.backend!r}"
        if hasattr(block, "cross_attn"):
            return "cross-attention"
    return None


def static_mask(stack: nn.Module, keep: Tensor, slot: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 1|H, 1, L) additive mask of the new query at cache slot `slot` over the first
    L = keep.size(1) slots (see the module docstring): 0 (or the position bias) where allowed,
    the dtype's minimum elsewhere."""
    slots = torch.arange(keep.size(1), device=keep.device)  # (L,)
    allowed = keep & (slots <= slot)[None]  # (B, L)
    window = stack.cfg.sliding_window
    if window is not None:
        allowed = allowed & ((slot - slots) < window)[None]
    allowed = allowed[:, None, None, :]  # (B, 1, 1, L)
    lowest = torch.finfo(dtype).min
    bias_fn = stack._bias_fn()
    if bias_fn is None:
        return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(
            ~allowed, lowest
        )
    bias = bias_fn(slot, slots).to(dtype)  # (1, H, 1, L)
    return bias.masked_fill(~allowed, lowest)


def _plain_linears(*modules: nn.Module) -> bool:
    """All plain `nn.Linear` (not LoRA- or quantization-wrapped), all with or all without bias."""
    return (
        all(type(m) is nn.Linear for m in modules) and len({m.bias is None for m in modules}) == 1
    )


def _fused_qkv(attn: nn.Module) -> tuple[Tensor, Tensor | None]:
    """[W_q; W_k; W_v] and [b_q; b_k; b_v]: the weight and bias of the fused projection."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    weight = torch.cat([p.weight for p in projs])
    bias = None if projs[0].bias is None else torch.cat([p.bias for p in projs])
    return weight, bias


def _attend(
    attn: nn.Module,
    x: Tensor,
    mask: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    k_cache: Tensor,
    v_cache: Tensor,
    slot: Tensor,
    explicit: bool,
) -> Tensor:
    """Self-attention of one new token per row: (B, 1, d) -> (B, 1, d), k/v written at `slot`;
    `explicit`: the formula written out instead of the fused SDPA kernel (see `static_step`).

    With T = 1, (B, 1, H * hd) viewed as (B, H, 1, hd) is already the head-major layout, so no
    transposes are needed on the way in or out."""
    b = x.size(0)
    h, hkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    if explicit and _plain_linears(attn.q_proj, attn.k_proj, attn.v_proj):
        # fused q, k, v: one (H + 2 H_kv) hd x d product instead of three. Inside a frozen
        # compiled graph the concatenation of the weights is folded into a constant once
        q, k, v = F.linear(x, *_fused_qkv(attn)).split([h * hd, hkv * hd, hkv * hd], dim=-1)
        q, k, v = q.view(b, h, 1, hd), k.view(b, hkv, 1, hd), v.view(b, hkv, 1, hd)
    else:
        q = attn.q_proj(x).view(b, h, 1, hd)
        k = attn.k_proj(x).view(b, hkv, 1, hd)
        v = attn.v_proj(x).view(b, hkv, 1, hd)
    if rope is not None:
        q = apply_rope(q, *rope)
        k = apply_rope(k, *rope)
    k_cache.index_copy_(2, slot, k)
    v_cache.index_copy_(2, slot, v)
    if not explicit:
        out = F.scaled_dot_product_attention(
            q, k_cache, v_cache, attn_mask=mask, scale=attn.scale, enable_gqa=h != hkv
        )  # (B, H, 1, hd)
        return attn.o_proj(out.reshape(b, 1, h * hd))
    # softmax(q K^T * scale + mask) V written out, for the compiler to fuse; query heads that
    # share a key/value head (grouped-query attention) are batched together: (B, H_kv, rep, .)
    rep = h // hkv
    scale = attn.scale if attn.scale is not None else hd**-0.5
    q = q.view(b, hkv, rep, hd)
    scores = (q @ k_cache.transpose(-2, -1)).float() * scale  # (B, H_kv, rep, L)
    m = mask.float()
    scores = scores + (m if m.size(1) == 1 else m.view(m.size(0), hkv, rep, -1))
    weights = torch.softmax(scores, dim=-1).to(q.dtype)
    out = weights @ v_cache  # (B, H_kv, rep, hd)
    return attn.o_proj(out.reshape(b, 1, h * hd))


def static_step(
    model: nn.Module,
    ids: Tensor,
    pos: Tensor,
    slot: Tensor,
    keep: Tensor,
    ks: list[Tensor],
    vs: list[Tensor],
    explicit: bool = False,
) -> Tensor:
    """One decoding step: (B, 1) ids at positions pos (B, 1), written at cache slot `slot`
    ((1,) long) of the per-layer cache views ks, vs (each (B, H_kv, L, hd), L = slot + 1: the
    slots written so far and the new one); keep (B, L) bool marks the non-padding slots. Every
    shape is fixed for a generation except L. Returns (B, V) float32 logits.

    The same computation as `Transformer.forward` for a decoder (dropout is off: generation runs
    in eval mode), written without host checks; see the module docstring.
    explicit: attention as matmul + softmax + matmul instead of SDPA. Compiled steps use it: for
    a single query the fused SDPA CPU kernel splits the work into (batch, head) tasks and took 19%
    of the compiled step at batch 8 (BENCHMARKS.md), while the written-out form lets the compiler
    fuse the mask, scale and softmax into one loop.
    """
    stack = model.decoder
    x = model.embed(ids, pos)  # (B, 1, d)
    mask = static_mask(stack, keep, slot, x.dtype)
    rope = stack.rope(pos, x.dtype) if stack.rope is not None else None
    for i, block in enumerate(stack.layers):
        if block.pre_norm:
            x = x + _attend(
                block.attn, block.attn_norm(x), mask, rope, ks[i], vs[i], slot, explicit
            )
            x = x + block.mlp(block.mlp_norm(x))
        else:
            a = _attend(block.attn, x, mask, rope, ks[i], vs[i], slot, explicit)
            x = block.attn_norm(x + a)
            x = block.mlp_norm(x + block.mlp(x))
    if stack.norm is not None:
        x = stack.norm(x)
    heads = model.heads
    if heads.logit_scale != 1.0:
        x = x * heads.logit_scale
    return heads.lm_head(x)[:, -1].float()


# inductor options of the compiled step:
# - freezing: the weights are constants of the graph, packed once into the layout the matrix
#   kernels read (the graph is rebuilt by `compiled_step` whenever a weight changes);
# - max_autotune with the "CPP" GEMM backend: inductor also generates its own C++ matrix kernels
#   for each linear's shape (vectorised, multi-threaded over the output features), times them
#   against the ATen/MKL call once at compile time and keeps the faster. For one to eight rows
#   (decoding) the generated kernels read the weights several times faster than MKL's on the
#   CPUs measured (BENCHMARKS.md), at the price of a longer first call.
COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}

# one compiled step per model: torch.compile keys its cache on the function's code, and a
# frozen graph holds the weights as constants, so each model gets its own function object
_COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Callable]] = (
    weakref.WeakKeyDictionary()
)


def _weights_key(model: nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer: changes when weights do."""
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.device)
        for t in list(model.parameters()) + list(model.buffers())
    )


def compiled_step(model: nn.Module) -> Callable:
    """`static_step` under torch.compile for `model` (fullgraph; static shapes except the
    number of cached slots), reused while the model's weights are unchanged and rebuilt when
    they change (a frozen graph holds them as constants)."""
    key = _weights_key(model)
    hit = _COMPILED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    # a fresh code object: torch.compile caches per code object, and a stale entry (frozen
    # weights of before) must not be found
    fn = type(static_step)(
        static_step.__code__.replace(), static_step.__globals__, "static_step_compiled"
    )
    compiled = torch.compile(fn, fullgraph=True)

    import torch._inductor.config as inductor_config

    def step(*args):
        # compilation happens inside a call (the first, or one with new shapes); the options are
        # inductor settings, patched in for the call only
        with inductor_config.patch(COMPILE_OPTIONS):
            return compiled(*args)

    _COMPILED[model] = (key, step)
    return step


def _default_stance() -> bool:
    """True when torch.compile runs as usual: no caller-set stance (such as "force_eager") that
    skipping guards would override."""
    import torch._dynamo.eval_frame as eval_frame

    stance = getattr(eval_frame, "_stance", None)
    return stance is not None and stance.stance == "default" and stance.backend is None


class StaticDecoder:
    """Runs `static_step` (compiled or not) for one generation over `cache`.

    Args:
        model: a model `static_unsupported` accepts.
        cache: the KV cache the prefill filled (its `length` = prompt width).
        mask: (B, T) the prompt's attention mask, 1 = token, 0 = left padding.
        compile: use `compiled_step`.
    """

    def __init__(self, model: nn.Module, cache: KVCache, mask: Tensor, compile: bool) -> None:
        self.model, self.cache = model, cache
        b, t = mask.shape
        keep = torch.ones(b, cache.max_len, dtype=torch.bool, device=mask.device)
        keep[:, :t] = mask.bool()
        self.keep = keep
        self.pos = mask.long().sum(1, keepdim=True)  # (B, 1): real tokens before the next one
        self._views()
        self.slot = torch.full((1,), cache.length, dtype=torch.long, device=mask.device)
        self.step = compiled_step(model) if compile else static_step
        self.explicit = compile
        self.checked = False  # has a call of this generation run the compiled step's guards?

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (as `KVCache.reorder`, which must be called too)."""
        self.keep, self.pos = self.keep[index], self.pos[index]
        self._views()

    def _views(self) -> None:
        # per-layer cache views, narrowed to a pruned block's own key/value heads
        heads = [block.attn.n_kv_head for block in self.model.decoder.layers]
        self.ks = [self.cache.k[i, :, :h] for i, h in enumerate(heads)]
        self.vs = [self.cache.v[i, :, :h] for i, h in enumerate(heads)]

    def __call__(self, token: Tensor) -> Tensor:
        """(B, 1) newest tokens -> (B, V) float32 logits of the next ones."""
        cache = self.cache
        if cache.length >= cache.max_len:
            raise GenerationError(
                f"the sequence would reach {cache.length + 1} tokens but the cache holds "
                f"{cache.max_len}; ask for fewer new tokens or a shorter prompt."
            )
        # attend over the slots written so far: the views' length is the one dimension that
        # changes from step to step, and the compiled step treats it as symbolic
        end = cache.length + 1
        ks = [k[:, :, :end] for k in self.ks]
        vs = [v[:, :, :end] for v in self.vs]
        keep = self.keep[:, :end]
        if self.explicit:
            for t in (*ks, *vs):
                torch._dynamo.mark_dynamic(t, 2)
            torch._dynamo.mark_dynamic(keep, 1)
        args = (self.model, token, self.pos, self.slot, keep, ks, vs, self.explicit)
        if self.explicit and self.checked and _default_stance():
            # the first call of this generation ran every guard (and compiled if none matched);
            # later calls differ only in the symbolic number of slots, so only the guards that
            # tell this model's compiled graphs apart (batch size, dtype) need to run
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                logits = self.step(*args)
        else:
            logits = self.step(*args)
            self.checked = True
        cache.length += 1
        self.slot += 1  # in place, outside the step: the step's inputs keep their identity
        self.pos += 1
        return logits
