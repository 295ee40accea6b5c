"""Quantized linears and token embeddings: the modules a quantized checkpoint loads into.

`lmforge.compress.quantize_model(model, "int8" | "int4" | "dynamic-int8")` replaces the `nn.Linear` projections
(attention q/k/v/o, the MLP, the heads) by quantized linears with the same `in_features`,
`out_features` and `bias`; the model's own forward calls them as modules, so every decode path
(sampling, beam, speculative, the server) runs the quantized weights. The formulas, with w one
row of the weight W (d_out x d_in):

- int8 (per output channel, symmetric):
      s = max|w| / 127,   q = clamp(round(w / s), -127, 127),   w_hat = q s
      y = x W_hat^T + b   (weight-only: the activations stay in floating point)
  except on the CPU for up to `KERNEL_ROWS` rows (decode steps and prompts), where the
  activations are quantized as in dynamic-int8 below over each piece of `DECODE_ROWS` rows
  (llama.cpp's Q8_0 matmul quantizes them too, per block of 32 values);
- int4 (weight-only, per group of `group_size` inputs, asymmetric, as gpt-fast and torchao):
      s = (max(w_g) - min(w_g)) / 15,   q = clamp(round((w - min(w_g)) / s), 0, 15),
      z = min(w_g) + 8 s,   w_hat = (q - 8) s + z
- dynamic-int8 (weights as int8 above; each call quantizes the activations too, per tensor,
  affine, with PyTorch's `_choose_qparams_per_tensor` rule, then multiplies in integers):
      x_hat = (clamp(round(x / s_x) + z_x, 0, 127) - z_x) s_x,   y = x_hat W_hat^T + b

The fast path is PyTorch's own fbgemm/x86 kernel `quantized.linear_dynamic` (`torch.ao`),
which measured faster at batch 1 than fp32 MKL and than the native weight-only kernels
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`: several times slower than fp32 here);
int4 decodes through an int8 copy of its weight derived at load (see `Int4Linear`). Under
torch.compile the same kernel runs as the operator `lmforge::int8_dynamic_linear`, except for
one row (a batch-1 decode step): there inductor's own fused weight-only product-and-sum
(`Int8Linear.gemv`, the int8 weight converted inside the reduction loop) read the weight about
twice as fast as the kernel and is taken, so a compiled batch-1 step is weight-only (no
activation rounding) while eager rounds the activations (BENCHMARKS.md "Quantized decode,
round 4"); from two rows on the kernel was faster and compiled equals eager.
Each module also has the plain rule (`dequantized_weight()` then `F.linear`), used for many rows,
while autograd records (QLoRA training: the base is frozen, gradients flow to the input) and on
devices the kernels do not cover; the tests check every kernel against its plain rule.

Storage: the state dict holds only plain tensors (int8 / packed uint8 weights, float scales and
zero points, float biases), so a quantized model is saved as safetensors; `quantization_record`
gives the JSON that `config.json` keeps (method, group size, which modules) and
`prepare_quantized` rebuilds the swapped modules of a freshly built model before its state loads.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError

Method = Literal["int8", "int4", "dynamic-int8"]
METHODS: tuple[str, ...] = get_args(Method)
GROUP_SIZES = (32, 64, 128, 256)
ATTR = "quantization"
#: rows (batch x new tokens) that share one activation scale in the int8 kernel: a decode step
#: of up to 8 sequences is one call, a prompt is cut into pieces of this many rows
DECODE_ROWS = 8
#: rows up to which int8 / int4 run the kernel (decode steps and prompts); more rows (evaluation
#: and training batches) dequantize the weight once and multiply in floating point, which is as
#: fast from about 512 rows on (BENCHMARKS.md, "Quantized decode, round 3")
KERNEL_ROWS = 256
#: rows up to which int8 / int4 under torch.compile skip the kernel for inductor's fused
#: weight-only product-and-sum, which reads the int8 weight at about twice the kernel's speed at
#: one row and loses from two rows on (BENCHMARKS.md "Quantized decode, round 4")
GEMV_ROWS = 1
EMBED = "embed.tok"


# ----------------------------------------------------------------------------- plain formulas
def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8: s = max|w|/127, q = clamp(round(w/s), -127, 127).

    Args:
        w: (d_out, d_in) float weight.

    Returns:
        q (d_out, d_in) int8 and s (d_out,) float32, with w ~ q * s[:, None].
    """
    w = w.detach().float()
    s = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q, s


def dequantize_int8(q: Tensor, s: Tensor) -> Tensor:
    """w_hat = q s (per row), float32."""
    return q.float() * s.float()[:, None]


def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Group-wise asymmetric int4 over `group_size` consecutive inputs of each row.

        s = (max - min) / 15,  q = clamp(round((w - min) / s), 0, 15),  z = min + 8 s

    Args:
        w: (d_out, d_in) float weight, d_in divisible by group_size.

    Returns:
        q (d_out, d_in) uint8 in [0, 15], s and z (d_out, d_in // group_size) float32, with
        w ~ (q - 8) s + z per group.
    """
    d_out, d_in = w.shape
    wg = w.detach().float().reshape(d_out, d_in // group_size, group_size)  # (N, G, g)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)  # (N, G)
    s = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.round((wg - lo[..., None]) / s[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(d_out, d_in), s, lo + 8 * s


def dequantize_int4(q: Tensor, s: Tensor, z: Tensor) -> Tensor:
    """w_hat = (q - 8) s + z per group, float32; q (d_out, d_in), s and z (d_out, groups)."""
    d_out, d_in = q.shape
    g = d_in // s.shape[1]
    qg = q.float().reshape(d_out, -1, g)  # (N, G, g)
    return ((qg - 8) * s.float()[..., None] + z.float()[..., None]).reshape(d_out, d_in)


def pack_int4(q: Tensor) -> Tensor:
    """Two 4-bit values per byte: even inputs in the low nibble, odd inputs in the high one."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """Inverse of `pack_int4`: (d_out, d_in // 2) uint8 -> (d_out, d_in) values in [0, 15]."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


# ----------------------------------------------------------------------------- compiled decode
# fbgemm's packed weights (`quantized.linear_prepack`) by the int8 weight they were packed from:
# data pointer -> (a weak reference to that weight, its in-place version, the packed object).
# The weak reference tells a live entry from a stale one whose memory another tensor now uses,
# the version one whose values changed in place since.
_PACKED: dict[int, tuple[weakref.ref, int, Any]] = {}


def _prepack(weight: Tensor, scales: Tensor, bias: Tensor | None) -> Any:
    """fbgemm's packed form of w_hat = q s (per output channel) and the float bias."""
    with warnings.catch_warnings():  # quantized tensor creation warns of its deprecation
        warnings.simplefilter("ignore")
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        qw = torch._make_per_channel_quantized_tensor(weight, scales.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(
            qw, None if bias is None else bias.detach().float()
        )


def _packed_for(weight: Tensor, scales: Tensor, bias: Tensor | None) -> Any:
    """The packed weight of `weight` (packed now, and remembered, when none is known)."""
    hit = _PACKED.get(weight.data_ptr())
    if hit is not None:
        ref, version, packed = hit
        same = ref()
        if same is not None and same.shape == weight.shape and weight._version == version:
            return packed
    packed = _prepack(weight, scales, bias)
    _remember(weight, packed)
    return packed


def _remember(weight: Tensor, packed: Any) -> None:
    key = weight.data_ptr()
    _PACKED[key] = (weakref.ref(weight, lambda _: _PACKED.pop(key, None)), weight._version, packed)


def _dynamic_linear(x: Tensor, packed: Any, out_features: int, chunk_rows: int) -> Tensor:
    """fbgemm's `quantized.linear_dynamic` on the rows of `x`, `chunk_rows` rows a call (0: all
    rows in one call), each call quantizing its activations per tensor (7 bits)."""
    if x.dtype == torch.float32 and (not chunk_rows or x.numel() <= chunk_rows * x.shape[-1]):
        return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, True)  # a decode step
    flat = x.reshape(-1, x.shape[-1]).float()
    if chunk_rows and flat.shape[0] > chunk_rows:
        parts = [
            torch.ops.quantized.linear_dynamic(c.contiguous(), packed, True)
            for c in flat.split(chunk_rows)
        ]
        y = torch.cat(parts)
    else:
        y = torch.ops.quantized.linear_dynamic(flat.contiguous(), packed, True)
    return y.reshape(*x.shape[:-1], out_features).to(x.dtype)


@torch.library.custom_op("lmforge::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(
    x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None, chunk_rows: int
) -> Tensor:
    """fbgemm's dynamic int8 linear as one operator a compiled graph can call (inductor cannot
    trace the packed weight object): y = x_hat (q s)^T + b with x_hat quantized per tensor to
    7 bits over each `chunk_rows` rows (`Int8Linear.dynamic_reference`). The packed weight is
    looked up by `weight` (see `_PACKED`)."""
    packed = _packed_for(weight, scales, bias)
    return _dynamic_linear(x, packed, weight.shape[0], chunk_rows)


@int8_dynamic_linear.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor | None, chunk_rows: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


# ----------------------------------------------------------------------------- modules
class QuantizedLinear(nn.Module):
    """Common shape of the quantized linears: `in_features`, `out_features`, a float `bias`
    (frozen Parameter or None), `dequantized_weight()` and `from_linear`.

    The stored tensors (integer weights, scales, zero points) are frozen Parameters, not
    buffers: the same state dict, but torch.compile checks a buffer's tensor guards before every
    call of a compiled step, even with guard evaluation skipped (1.27 ms a token for the
    SmolLM2-135M shape in int8, 0.37 ms as Parameters; BENCHMARKS.md "Quantized decode, round 4").
    """

    method: str = ""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        b = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.register_parameter("bias", b)
        # the kernels' own layouts are rebuilt from the stored tensors after every load
        self.register_load_state_dict_post_hook(lambda module, _: module.repack())

    def _store(self, **tensors: Tensor) -> None:
        """Set stored tensors as frozen Parameters (integer ones cannot require gradients)."""
        for name, t in tensors.items():
            setattr(self, name, nn.Parameter(t, requires_grad=False))

    def dequantized_weight(self) -> Tensor:
        raise NotImplementedError

    def repack(self) -> None:
        """Rebuild whatever derived layout the fast kernel reads (after a load or a move)."""

    def reference(self, x: Tensor) -> Tensor:
        """The plain rule: y = x W_hat^T + b."""
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _use_reference(self, x: Tensor) -> bool:
        return x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Int8Linear(QuantizedLinear):
    """Int8 weights, per output channel: y = x (q s)^T + b (see the module docstring).

    Stored (frozen Parameters): `weight` (d_out, d_in) int8, `scales` (d_out,) float32. The
    fbgemm/x86 packed weight is derived by `repack()` and is not stored.

    Which arithmetic runs (the fastest measured on CPU, BENCHMARKS.md "Quantized decode,
    round 3"):

    - up to `KERNEL_ROWS` rows (decode steps, prompts), eager or under torch.compile (through
      the `lmforge::int8_dynamic_linear` operator): fbgemm's `quantized.linear_dynamic`, the
      activations quantized too (per tensor over each piece of `DECODE_ROWS` rows, 7 bits,
      `reduce_range`); `dynamic_reference` is its plain rule;
    - under torch.compile, up to `gemv_rows` rows (a batch-1 decode step): weight-only, one
      fused product-and-sum over the int8 weight (`gemv`);
    - more rows (training, evaluation batches), autograd and devices other than the CPU:
      weight-only, the dequantized weight through `F.linear` (`reference`).
    """

    method = "int8"
    reduce_range = True  # 7-bit activations, the x86 rule that keeps u8 x s8 sums from saturating
    #: rows up to which activations are quantized (None: every call, the dynamic-int8 method)
    dynamic_rows: int | None = KERNEL_ROWS
    #: rows sharing one activation scale (0: all rows of a call)
    chunk_rows: int = DECODE_ROWS
    #: rows up to which a compiled call is weight-only (`gemv`) instead of the fbgemm kernel
    gemv_rows: int = GEMV_ROWS

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self._store(
            weight=torch.zeros(out_features, in_features, dtype=torch.int8),
            scales=torch.ones(out_features),
        )
        self._packed: Any = None

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        q, scales = quantize_int8(lin.weight)
        m._store(weight=q, scales=scales)
        if lin.bias is not None:
            m.bias.data = lin.bias.detach().float().clone()
        return m.to(lin.weight.device)  # .to() packs the weight for its device (_apply)

    def repack(self) -> None:
        if self.weight.device.type != "cpu" or self.weight.is_meta:
            self._packed = None
            return
        self._packed = _prepack(self.weight, self.scales, self.bias)
        _remember(self.weight, self._packed)

    def _apply(self, fn, recurse=True):  # .to(device): the packed weight follows the weights
        out = super()._apply(fn, recurse)
        self.repack()
        return out

    def dequantized_weight(self) -> Tensor:
        return dequantize_int8(self.weight, self.scales)

    def dynamic_reference(self, x: Tensor) -> Tensor:
        """x_hat W_hat^T + b, x_hat fake-quantized with the kernel's own per-tensor rule over
        each `chunk_rows` rows (all rows when 0)."""
        flat = x.float().reshape(-1, self.in_features)  # not detached: gradients pass (STE)
        qmax = 127 if self.reduce_range else 255
        parts = []
        for c in flat.split(self.chunk_rows) if self.chunk_rows else [flat]:
            scale, zero = torch._choose_qparams_per_tensor(c.detach(), self.reduce_range)
            parts.append(torch.fake_quantize_per_tensor_affine(c, scale, zero, 0, qmax))
        x_hat = torch.cat(parts).reshape(x.shape)
        return QuantizedLinear.reference(self, x_hat).to(x.dtype)

    def _dynamic(self, rows: int) -> bool:
        return self.dynamic_rows is None or rows <= self.dynamic_rows

    def gemv(self, x: Tensor) -> Tensor:
        """Weight-only y = (sum_k x_k q_nk) s_n + b_n as one reduction over the int8 weight
        (the plain rule `reference`, summed in another order): under torch.compile inductor
        fuses the int8-to-float conversion into the loop, so the weight is read as int8 once."""
        y = (x.unsqueeze(-2) * self.weight.to(x.dtype)).sum(-1) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if torch.compiler.is_compiling():
            if self._use_reference(x) or not self._dynamic(rows):
                return self.reference(x)
            if rows <= self.gemv_rows:
                return self.gemv(x)
            return int8_dynamic_linear(x, self.weight, self.scales, self.bias, self.chunk_rows)
        if self._use_reference(x) or self._packed is None or not self._dynamic(rows):
            return self.reference(x)
        return _dynamic_linear(x, self._packed, self.out_features, self.chunk_rows)


class Int4Linear(QuantizedLinear):
    """Weight-only int4, group-wise: y = x ((q - 8) s + z)^T + b (see the module docstring).

    Stored (frozen Parameters): `weight` (d_out, d_in // 2) uint8 (two values a byte,
    `pack_int4`), `scales` and `zeros` (d_out, d_in // group_size) float32.

    PyTorch's own int4 CPU kernel (`_weight_int4pack_mm_for_cpu`) measured 10-15x slower than
    fp32 MKL at batch 1 here, so up to `KERNEL_ROWS` rows on the CPU (eager or compiled) run the
    fbgemm int8 kernel of `Int8Linear` on a copy derived at load (`repack()`, not stored): the
    int4 weight dequantized and rounded again to int8 per output channel (W8 = int8(W_hat)),
    the activations quantized per tensor over each piece of `DECODE_ROWS` rows. Its plain rule
    is `decode_reference`; a compiled one-row call is the copy's weight-only `gemv`
    (x W8^T + b: inductor's product-and-sum straight from the packed 4-bit bytes measured at
    best twice as slow as from the int8 copy). More rows, autograd and other devices use the
    weight-only rule (`reference`).
    """

    method = "int4"

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128
    ) -> None:
        super().__init__(in_features, out_features, bias)
        check_int4_shape(in_features, group_size)
        self.group_size = group_size
        groups = in_features // group_size
        self._store(
            weight=torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8),
            scales=torch.ones(out_features, groups),
            zeros=torch.zeros(out_features, groups),
        )
        self._decode: Int8Linear | None = None

    @classmethod
    def from_linear(cls, lin: nn.Linear, group_size: int = 128) -> Int4Linear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size)
        q, scales, zeros = quantize_int4(lin.weight, group_size)
        m._store(weight=pack_int4(q), scales=scales, zeros=zeros)
        if lin.bias is not None:
            m.bias.data = lin.bias.detach().float().clone()
        return m.to(lin.weight.device)  # .to() packs the weight for its device (_apply)

    def repack(self) -> None:
        if self.weight.device.type != "cpu" or self.weight.is_meta:
            self._decode = None
            return
        dec = Int8Linear(self.in_features, self.out_features, self.bias is not None)
        q, scales = quantize_int8(self.dequantized_weight())
        dec._store(weight=q, scales=scales)
        if self.bias is not None:
            dec.bias.data = self.bias.detach().float().clone()
        dec.repack()
        # a plain attribute, not a submodule: it is derived, never saved or counted
        self.__dict__["_decode"] = dec

    def _apply(self, fn, recurse=True):  # .to(device): the derived copy follows the weights
        out = super()._apply(fn, recurse)
        self.repack()
        return out

    def dequantized_weight(self) -> Tensor:
        return dequantize_int4(unpack_int4(self.weight), self.scales, self.zeros)

    def decode_reference(self, x: Tensor) -> Tensor:
        """The decode kernel's plain rule: x_hat W8^T + b (see the class docstring)."""
        if self._decode is None:
            self.repack()
        return self._decode.dynamic_reference(x)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        dec = self._decode
        if self._use_reference(x) or dec is None or rows > KERNEL_ROWS:
            return self.reference(x)
        if torch.compiler.is_compiling():  # the packed weight is looked up inside the operator
            return dec(x)
        return self.reference(x) if dec._packed is None else dec(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


class DynamicInt8Linear(Int8Linear):
    """Dynamic int8: the int8 weights of `Int8Linear`, the activations quantized at every call
    (any number of rows): the method for encoders (BERT classifiers), whose matmuls are large
    enough that integer arithmetic pays. Same stored tensors as `Int8Linear`."""

    method = "dynamic-int8"
    dynamic_rows = None
    chunk_rows = 0
    gemv_rows = 0

    def reference(self, x: Tensor) -> Tensor:
        """x_hat W_hat^T + b (`dynamic_reference`): this method quantizes every call's input."""
        return self.dynamic_reference(x)


# ----------------------------------------------------------------------------- embeddings
def quantize_rows_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(V, d) float -> (V, d) int8 codes and (V,) scales, s = max|row| / 127 (1 for a zero row)."""
    s = w.abs().amax(dim=1).float() / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round(w.float() / s[:, None]), -127, 127).to(torch.int8)
    return q, s


class Int8Embedding(nn.Module):
    """An `nn.Embedding` with int8 rows: forward(ids) = q[ids] * s[ids] (see the module doc)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = (
            num_embeddings,
            embedding_dim,
            dtype,
        )
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> Int8Embedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.weight.dtype)
        q, s = quantize_rows_int8(emb.weight.detach())
        new.weight.copy_(q)
        new.scale.copy_(s)
        return new.to(emb.weight.device)

    def dequantized_weight(self) -> Tensor:
        """The whole table, e_hat = q s (the plain rule the lookup must match)."""
        return (self.weight.float() * self.scale[:, None]).to(self.out_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.weight[ids].float() * self.scale[ids].unsqueeze(-1)  # (..., d)
        return rows.to(self.out_dtype)


# ----------------------------------------------------------------------------- loading
def check_int4_shape(in_features: int, group_size: int) -> None:
    """Raise `ConfigError` unless int4 can take a layer of `in_features` inputs in groups."""
    if group_size not in GROUP_SIZES:
        raise ConfigError(
            f"int4 group size must be one of {list(GROUP_SIZES)}, got {group_size}; "
            "pass --group-size 32, 64 or 128."
        )
    if in_features % group_size:
        raise ConfigError(
            f"int4 needs in_features divisible by the group size, got {in_features} and "
            f"{group_size}; choose a smaller group size."
        )


def check_method(method: str, group_size: int) -> None:
    """Raise `ConfigError` for an unknown method or int4 group size."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown quantization method '{method}'; choose one of {', '.join(METHODS)}."
        )
    if method == "int4" and group_size not in GROUP_SIZES:
        check_int4_shape(group_size, group_size)


def _empty(method: str, lin: nn.Linear, group_size: int) -> QuantizedLinear:
    bias = lin.bias is not None
    if method == "int8":
        return Int8Linear(lin.in_features, lin.out_features, bias)
    if method == "int4":
        return Int4Linear(lin.in_features, lin.out_features, bias, group_size)
    return DynamicInt8Linear(lin.in_features, lin.out_features, bias)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def prepare_quantized_embeddings(model: nn.Module, names: list[str]) -> None:
    """Swap empty `Int8Embedding`s in for the names of a record, ready for a state load."""
    for name in names:
        if name != EMBED:
            raise ConfigError(f"unknown quantized embedding '{name}' in config.json.")
        embed = model.get_submodule("embed")
        embed.tok = Int8Embedding(embed.tok.num_embeddings, embed.tok.embedding_dim)


def prepare_quantized(
    model: nn.Module, record: dict[str, Any], missing_ok: bool = False
) -> nn.Module:
    """Swap the modules named in `record` for empty quantized linears, ready for a state load.

    Args:
        model: the freshly built floating-point model.
        record: the `quantization` entry of config.json.
        missing_ok: skip named modules the model does not have (a fine-tune that replaces the
            base's heads by a task head); the model's record then lists only the swapped ones.

    Raises `ConfigError` when the record does not fit the model (an unknown method or a module
    that is not a linear layer).
    """
    if not isinstance(record, dict) or "method" not in record or "modules" not in record:
        raise ConfigError(
            "the 'quantization' entry of config.json needs 'method' and 'modules'; re-run "
            "`lmforge quantize` on the original model."
        )
    method, group_size = record["method"], int(record.get("group_size", 128))
    check_method(method, group_size)
    known = dict(model.named_modules())
    names = [n for n in record["modules"] if not missing_ok or n in known]
    for name in names:
        lin = known.get(name)
        if type(lin) is not nn.Linear:
            raise ConfigError(
                f"config.json quantizes '{name}', which is not a linear layer of this model; "
                "the config does not match the weights."
            )
        _swap(model, name, _empty(method, lin, group_size))
    if record.get("embeddings"):  # int8 token embeddings (`Int8Embedding`)
        prepare_quantized_embeddings(model, list(record["embeddings"]))
    setattr(model, ATTR, {**record, "modules": names})
    return model


def quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    """The quantized linears of `model` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
