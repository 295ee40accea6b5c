"""The compile policy of the decode step: `Transformer.step` under torch.compile.

The model's own decode step (`lmforge.models.transformer.Transformer.step`) keeps every
per-step quantity on the device (the cache slot, each row's position, the keep-vector of padding
slots, see `lmforge.models.cache.CacheView`), so torch.compile captures it without host syncs
(gpt-fast style). Two ways to compile it (`compile="whole"` or `"regional"`; compile=True is
`DEFAULT_MODE`):

- "whole" (`CompiledStep`): the step as one graph per model and batch size (only "dynamic"
  RoPE scaling, which reads the largest position on the host, allows graph breaks), weights
  frozen into it; the compile time grows with the number of layers;
- "regional" (`RegionalStep`): one compiled run of a few consecutive blocks
  (`lmforge.models.block.call_blocks`, up to `REGION_LAYERS`) that every such run of the stack
  reuses, weights as graph inputs, the rest of the step eager; the compile time is that of one
  run, whatever the depth.

In both, the keys/values are views of the cache's first slot + 1 slots: their length is the one
size that changes between steps and is marked dynamic (one compilation for a whole generation,
no attention over unwritten slots); the matrix products are left to ATen/MKL (no autotuning,
whose first call took many minutes on a 30-layer model)."""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lmforge.errors import GenerationError, first_line
from lmforge.models.block import call_blocks
from lmforge.models.cache import CacheView
from lmforge.models.quant import quantized_modules

# inductor options of the compiled step:
# - freezing: the weights are constants of the graph, packed once into the layout the matrix
#   kernels read (the graph is rebuilt by `compiled_step` whenever a weight changes);
# - no max_autotune: autotuning times inductor's generated C++ matrix kernels against ATen/MKL
#   for every frozen linear, and a 30-layer model has 211 of them: its first call took many
#   minutes on 2 cores (more than 42 minutes on a loaded box), while at batch 1 MKL won most
#   of those autotunes anyway (BENCHMARKS.md "Decode speed, round 2"). Inductor still fuses
#   every elementwise step (norms, RoPE, activations, residuals) around the MKL calls;
# - no size asserts: the generated wrapper would check the sizes and strides of every input
#   (each weight included) on every call, about 550 checks a token on a 30-layer model; the
#   first call of a generation runs dynamo's guards, which check the same things;
# - realize_reads_threshold 2 (inductor's default 4): a norm's output that feeds two or more
#   reductions (q/k/v, gate/up of an int8 model's one-row product-and-sum) is computed once into
#   a buffer instead of inside every reduction's loop (the SmolLM2-135M-shape int8 layer kernel
#   ~7-10% faster in two paired profiles, BENCHMARKS.md "Decode, round 5").
REGIONAL_OPTIONS = {"size_asserts": False, "realize_reads_threshold": 2}
COMPILE_OPTIONS = {**REGIONAL_OPTIONS, "freezing": True}

# one compiled step per model: torch.compile keys its cache on the function's code, and a
# frozen graph holds the weights as constants, so each model gets its own function object
_COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Callable]] = (
    weakref.WeakKeyDictionary()
)
_REGIONAL: weakref.WeakKeyDictionary[nn.Module, RegionalStep] = weakref.WeakKeyDictionary()

# how compile=True compiles the step: "regional" (one compiled run of consecutive blocks shared
# by the whole stack; on the SmolLM2-135M shape it compiled in ~45 s, "whole" in ~96 s, and
# decoded at least as fast, BENCHMARKS.md "Decode, round 5") or "whole" (one graph, frozen weights)
COMPILE_MODES = ("whole", "regional")
DEFAULT_MODE = "regional"


def _step(
    model: nn.Module,
    ids: Tensor,
    slot: Tensor,
    pos: Tensor,
    keep: Tensor,
    ks: list[Tensor],
    vs: list[Tensor],
    cross: list,
    encoder_hidden: Tensor | None,
    encoder_mask: Tensor | None,
) -> Tensor:
    """`model.step` on flat tensor arguments (what the compiled function receives)."""
    view = CacheView(slot, pos, keep, ks, vs, cross)
    return model.step(ids, view, encoder_hidden, encoder_mask)


def _weights_key(model: nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer: changes when weights do."""
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.device)
        for t in list(model.parameters()) + list(model.buffers())
    )


def _default_stance() -> bool:
    """True when torch.compile runs as usual: no caller-set stance (such as "force_eager") that
    skipping guards would override."""
    import torch._dynamo.eval_frame as eval_frame

    stance = getattr(eval_frame, "_stance", None)
    return stance is not None and stance.stance == "default" and stance.backend is None


class StepCompileError(GenerationError):
    """Compiling the decode step failed (no C++ compiler, an operator inductor cannot lower):
    decode without compiling."""


class _Step:
    """What both compiled steps share: `checked` is set once a generation's first call has
    evaluated the guards (and compiled what was new); later calls skip guard evaluation. The
    flag is kept per thread.
    `dynamic_batch`: the batch axis is symbolic from the first compilation on (one graph for
    every batch size of 2 and more, one for batch 1), for a continuous batch whose rows come
    and go; otherwise each batch size gets its own graph."""

    def __init__(self, dynamic_batch: bool = False) -> None:
        # per thread: two threads generating with one model's step each have their generation
        # (one cannot reset, or skip, the guards of the other's)
        self._local = threading.local()
        self.dynamic_batch = dynamic_batch

    @property
    def checked(self) -> bool:
        return getattr(self._local, "checked", False)

    @checked.setter
    def checked(self, value: bool) -> None:
        self._local.checked = value

    def _mark_batch(self, *tensors: Tensor | None) -> None:
        """On a generation's first call with `dynamic_batch`: the batch axis of `tensors` is
        symbolic unless its size is 1 (a graph of its own)."""
        if self.dynamic_batch:
            for t in tensors:
                if t is not None:
                    torch._dynamo.maybe_mark_dynamic(t, 0)

    def new_generation(self) -> None:
        self.checked = False

    def _checked_call(self, fn, *args) -> Tensor:
        """`fn(*args)`, the step's compiled code, with guards skipped once checked."""
        if self.checked and _default_stance():
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return fn(*args)
        try:
            logits = fn(*args)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            raise StepCompileError(
                f"compiling the decode step failed ({first_line(exc)}); decode without "
                "compiling (drop compile=... or --compile)."
            ) from exc
        self.checked = True
        return logits


class CompiledStep(_Step):
    """`Transformer.step` compiled for one model; call as `step(ids, view, enc, enc_mask)`.

    After the first call of a generation (`new_generation()` resets this) has run every guard
    (and compiled if none matched), later calls differ only in the symbolic number of slots, so
    only the guards that tell this model's graphs apart (batch size, dtype) need to run.
    """

    def __init__(self, model: nn.Module, dynamic_batch: bool = False) -> None:
        import torch._inductor.config as inductor_config

        super().__init__(dynamic_batch)
        self.model = model
        fullgraph = not (model.cfg.pos == "rope" and model.cfg.rope_scaling == "dynamic")
        # a fresh code object: torch.compile caches per code object, and a stale entry (frozen
        # weights of before) must not be found
        fn = type(_step)(_step.__code__.replace(), _step.__globals__, "step_compiled")
        self._compiled = torch.compile(fn, fullgraph=fullgraph)
        options = COMPILE_OPTIONS
        if quantized_modules(model):
            # frozen, an int8 weight's conversion to float is folded into a float constant:
            # the graph would read four times the bytes (and hold them)
            options = {**COMPILE_OPTIONS, "freezing": False}
        self._patch = lambda: inductor_config.patch(options)

    def __call__(
        self,
        ids: Tensor,
        view: CacheView,
        encoder_hidden: Tensor | None = None,
        encoder_mask: Tensor | None = None,
    ) -> Tensor:
        if not self.checked:  # the first step of a generation: mark the growing slot axis
            for t in (*view.ks, *view.vs):
                torch._dynamo.mark_dynamic(t, 2)
            torch._dynamo.mark_dynamic(view.keep, 1)
            self._mark_batch(ids, view.pos, view.keep, *view.ks, *view.vs, encoder_hidden)
        args = (self.model, ids, view.slot, view.pos, view.keep, view.ks, view.vs)
        args += (view.cross, encoder_hidden, encoder_mask)
        # compilation happens inside a call (the first, or one with new shapes); the options
        # are inductor settings, patched in for the call only
        with self._patch():
            return self._checked_call(self._compiled, *args)


# how many consecutive blocks one compiled region runs, at most: each region call costs about
# 0.1 ms on the host (guards, graph inputs, the generated wrapper), and a region's compile time
# grows with its length (SmolLM2-135M shape, 30 layers, 2 cores: regions of 1 block compiled in
# ~31 s and decoded ~25% slower than one graph for the whole step; regions of 5 and 10 blocks
# compiled in ~38 s and ~51 s and decoded as fast as the whole step, which took ~108 s)
REGION_LAYERS = 6


def region_span(n_layer: int, most: int = REGION_LAYERS) -> int:
    """Blocks per compiled region: the largest divisor of `n_layer` up to `most` (every region
    the same length, so one compiled graph serves them all), unless that divisor is below half
    of `most`: then `most` itself, and the last, shorter region is a second graph."""
    most = min(n_layer, most)
    best = max(d for d in range(1, most + 1) if n_layer % d == 0)
    return best if 2 * best >= most else most


class RegionalStep(_Step):
    """`Transformer.step` with its blocks run in regions of `span` consecutive blocks by one
    compiled `call_blocks` (regional compilation): the blocks of a stack share their code, and
    with inlined modules (`torch._dynamo.config.inline_inbuilt_nn_modules`, on by default) the
    blocks' weights are inputs of the graph, so one graph serves every region of the same
    length and the compile time is that of one region, whatever the depth. The embedding, mask,
    RoPE angles, final norm and LM head run eagerly around the regions. Weights are not frozen
    (they are inputs), so nothing is rebuilt when they change."""

    def __init__(
        self,
        model: nn.Module,
        backend: str = "inductor",
        most: int = REGION_LAYERS,
        dynamic_batch: bool = False,
    ) -> None:
        super().__init__(dynamic_batch)
        self.model = model
        self.span = region_span(len(model.decoder.layers), most)
        fn = type(call_blocks)(
            call_blocks.__code__.replace(), call_blocks.__globals__, "blocks_compiled"
        )
        options = REGIONAL_OPTIONS if backend == "inductor" else None
        self._compiled = torch.compile(fn, fullgraph=True, backend=backend, options=options)
        # what `Stack.step` calls for each region (`span`: how many blocks a call runs, at most)
        self._region = functools.partial(RegionalStep._run, self)
        self._region.span = self.span

    def _run(self, blocks, x: Tensor, mask: Tensor, rope, caches, *rest) -> Tensor:
        if not self.checked:  # the first step of a generation: mark the growing slot axis
            torch._dynamo.mark_dynamic(mask, mask.dim() - 1)
            for cache in caches:
                torch._dynamo.mark_dynamic(cache.k, 2)
                torch._dynamo.mark_dynamic(cache.v, 2)
            self._mark_batch(x, mask, *(rope or ()), *(t for c in caches for t in (c.k, c.v)))
        return self._compiled(blocks, x, mask, rope, caches, *rest)

    def __call__(
        self,
        ids: Tensor,
        view: CacheView,
        encoder_hidden: Tensor | None = None,
        encoder_mask: Tensor | None = None,
    ) -> Tensor:
        return self._checked_call(
            self.model.step, ids, view, encoder_hidden, encoder_mask, self._region
        )


def regional_step(model: nn.Module) -> RegionalStep:
    """The regionally compiled decode step of `model` (one per model; weights are graph inputs,
    so it is kept when they change); each call starts a new generation."""
    hit = _REGIONAL.get(model)
    if hit is None:
        hit = _REGIONAL[model] = RegionalStep(model)
    hit.new_generation()
    return hit


def compiled_step(model: nn.Module) -> CompiledStep:
    """The compiled decode step of `model`, reused while its weights are unchanged and rebuilt
    when they change (a frozen graph holds them as constants); each call of this function starts
    a new generation (the first step runs every guard)."""
    key = _weights_key(model)
    hit = _COMPILED.get(model)
    if hit is None or hit[0] != key:
        hit = (key, CompiledStep(model))
        _COMPILED[model] = hit
    hit[1].new_generation()
    return hit[1]


def compile_mode(compile: bool | str) -> str:
    """The mode `compile` names: True is `DEFAULT_MODE`; an unknown mode raises."""
    mode = DEFAULT_MODE if compile is True else compile
    if mode not in COMPILE_MODES:
        raise GenerationError(
            f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)} "
            "(or compile=True for the default)."
        )
    return mode


def step_function(model: nn.Module, compile: bool | str) -> Callable | None:
    """The step a decode loop hands to `Transformer.decode_step`: None (eager `model.step`) or
    a compiled one: compile=True is `DEFAULT_MODE`, or name the mode, "whole" (`CompiledStep`)
    or "regional" (`RegionalStep`)."""
    if not compile:
        return None
    return compiled_step(model) if compile_mode(compile) == "whole" else regional_step(model)


def batch_step(model: nn.Module, compile: bool | str) -> CompiledStep | RegionalStep | None:
    """A compiled step of its own for a continuous batch (`ContinuousBatcher`): not the
    per-model one `step_function` shares (another loop's generation must not reset or skip its
    guards), with a symbolic batch axis; None when `compile` is False. In "whole" mode the
    weights are frozen into the graphs at their first compilation: after changing them, build a
    new batcher."""
    if not compile:
        return None
    if compile_mode(compile) == "whole":
        return CompiledStep(model, dynamic_batch=True)
    return RegionalStep(model, dynamic_batch=True)
