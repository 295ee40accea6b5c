"""The decode kernels of the quantized linears (`lmforge.models.quant`) against their plain
rules: up to KERNEL_ROWS rows on the CPU take the fbgemm int8 kernel, DECODE_ROWS rows a call
(activations quantized per tensor over each piece), eager and under torch.compile alike (the
`lmforge::int8_dynamic_linear` operator), except a compiled one-row call, which is weight-only
(`Int8Linear.gemv`); more rows stay weight-only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.models.quant import (
    DECODE_ROWS,
    KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    dequantize_int8,
    int8_dynamic_linear,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)


def _linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out, bias=bias)


def _fake_quant(x: torch.Tensor) -> torch.Tensor:
    """x_hat = (clamp(round(x / s) + z, 0, 127) - z) s with PyTorch's per-tensor 7-bit rule."""
    scale, zero = torch._choose_qparams_per_tensor(x, True)
    return ((torch.round(x / scale) + zero).clamp(0, 127) - zero) * scale


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, DECODE_ROWS])
def test_int8_decode_rows_quantize_the_activations(bias, rows):
    lin = _linear(96, 80, bias)
    m = Int8Linear.from_linear(lin)
    x = torch.randn(rows, 1, 96) * 2
    with torch.no_grad():
        want = _fake_quant(x) @ dequantize_int8(m.weight, m.scales).T
        want = want + lin.bias if bias else want
        got = m(x)
        weight_only = x @ dequantize_int8(m.weight, m.scales).T + (lin.bias if bias else 0)
    assert got.shape == (rows, 1, 80)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max(), rtol=1e-4)
    # the activation rounding is visible but small next to the weight-only output
    err = (got - weight_only).abs().max() / weight_only.abs().max()
    assert 0 < err < 0.05


def test_int8_prompt_rows_quantize_each_piece_of_decode_rows():
    """A prompt of DECODE_ROWS < rows <= KERNEL_ROWS runs the kernel DECODE_ROWS rows a call:
    each piece has its own activation scale (pieces of very different size show it)."""
    lin = _linear(96, 80)
    m = Int8Linear.from_linear(lin)
    sizes = torch.tensor([0.01, 1.0, 30.0])
    x = torch.randn(3, DECODE_ROWS, 96) * sizes[:, None, None]
    x = torch.cat([x.reshape(-1, 96), torch.randn(3, 96)]).reshape(1, -1, 96)  # a short last piece
    with torch.no_grad():
        pieces = [_fake_quant(c) for c in x.reshape(-1, 96).split(DECODE_ROWS)]
        want = torch.cat(pieces) @ dequantize_int8(m.weight, m.scales).T + lin.bias
        got = m(x)
        assert got.shape == (1, 3 * DECODE_ROWS + 3, 80)
        torch.testing.assert_close(got[0], want, atol=1e-4 * want.abs().max(), rtol=1e-4)
        torch.testing.assert_close(m.dynamic_reference(x), got, atol=1e-5, rtol=1e-5)
        # one scale for the whole prompt would flatten the small piece to zero
        whole = _fake_quant(x.reshape(-1, 96))[:DECODE_ROWS]
        assert whole.abs().max() == 0 < got[0, :DECODE_ROWS].sub(lin.bias).abs().max()


def test_int8_more_rows_stay_weight_only():
    lin = _linear(96, 80)
    m = Int8Linear.from_linear(lin)
    x = torch.randn(KERNEL_ROWS + 1, 96)
    with torch.no_grad():
        want = x @ dequantize_int8(m.weight, m.scales).T + lin.bias
        torch.testing.assert_close(m(x), want, atol=1e-4 * want.abs().max(), rtol=1e-4)


def test_the_operator_packs_an_unknown_weight_and_has_a_fake_kernel():
    """`lmforge::int8_dynamic_linear` on a weight no module packed gives the kernel's rule, and
    passes PyTorch's operator checks (schema, fake tensors) that torch.compile relies on."""
    lin = _linear(64, 48)
    q, s = quantize_int8(lin.weight)
    x = torch.randn(2, 64)
    with torch.no_grad():
        want = _fake_quant(x) @ dequantize_int8(q, s).T + lin.bias
        got = int8_dynamic_linear(x, q, s, lin.bias.detach(), DECODE_ROWS)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max(), rtol=1e-4)
    # a weight changed in place is packed again, not read from the earlier packing
    q.neg_()
    with torch.no_grad():
        want = _fake_quant(x) @ dequantize_int8(q, s).T + lin.bias
        got = int8_dynamic_linear(x, q, s, lin.bias.detach(), DECODE_ROWS)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max(), rtol=1e-4)
    args = (x, q, s, lin.bias.detach(), DECODE_ROWS)
    torch.library.opcheck(
        torch.ops.lmforge.int8_dynamic_linear.default,
        args,
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_decode_rows_use_the_int8_copy(group_size):
    lin = _linear(128, 48)
    m = Int4Linear.from_linear(lin, group_size)
    x = torch.randn(2, 128)
    with torch.no_grad():
        q, s, z = quantize_int4(lin.weight, group_size)
        assert torch.equal(unpack_int4(m.weight), q)
        q8, s8 = quantize_int8(dequantize_int4(q, s, z))
        want = _fake_quant(x) @ dequantize_int8(q8, s8).T + lin.bias
        got = m(x)
        torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max(), rtol=1e-4)
        torch.testing.assert_close(m.decode_reference(x), want, atol=1e-5, rtol=1e-5)
        # the int8 copy adds little to the int4 rounding
        weight_only = x @ dequantize_int4(q, s, z).T + lin.bias
        assert (got - weight_only).abs().max() / weight_only.abs().max() < 0.05
    # the copy is derived: not in the state dict, rebuilt after a load
    assert set(m.state_dict()) == {"weight", "scales", "zeros", "bias"}
    fresh = Int4Linear(128, 48, True, group_size)
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), got)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
def test_compiled_decode_is_weight_only_at_one_row_and_the_kernel_above(cls):
    """Under torch.compile (small graphs, some seconds): one row (a batch-1 decode step) is
    inductor's fused weight-only product-and-sum, equal to the plain weight-only rule of the
    weight the kernel reads; more rows go through the operator, the same numbers as eager."""
    lin = _linear(128, 32)
    m = cls.from_linear(lin).eval()
    dec = m if cls is Int8Linear else m._decode  # int4 decodes through its int8 copy
    compiled = torch.compile(m, fullgraph=True, dynamic=False)
    with torch.no_grad():
        x = torch.randn(1, 128)
        got = compiled(x)
        weight_only = x @ dequantize_int8(dec.weight, dec.scales).T + lin.bias
        torch.testing.assert_close(got, weight_only, atol=1e-5, rtol=1e-5)
        assert not torch.equal(got, m(x))  # eager quantizes the activations, this does not
        x = torch.randn(DECODE_ROWS, 128)
        got = compiled(x)
        rule = dec.dynamic_reference(x)
        torch.testing.assert_close(got, m(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got, rule, atol=1e-4 * rule.abs().max(), rtol=1e-4)


def test_int8_gemv_is_the_weight_only_rule():
    """`gemv` (what a compiled one-row call runs) is y = x (q s)^T + b, eager too."""
    for bias in (True, False):
        m = Int8Linear.from_linear(_linear(96, 40, bias)).eval()
        x = torch.randn(3, 1, 96)
        with torch.no_grad():
            torch.testing.assert_close(m.gemv(x), m.reference(x), atol=1e-5, rtol=1e-5)


def test_dynamic_int8_passes_gradients_to_its_input():
    """Saliency and other input gradients go through the activation rounding as identity
    (straight-through): d sum(y) / dx = sum over outputs of W_hat."""
    from lmforge.models.quant import DynamicInt8Linear

    m = DynamicInt8Linear.from_linear(_linear(64, 32))
    x = torch.randn(2, 64, requires_grad=True)
    m(x).sum().backward()
    want = dequantize_int8(m.weight, m.scales).sum(0).expand(2, -1)
    torch.testing.assert_close(x.grad, want)


@pytest.mark.slow
def test_compiled_int8_model_gives_the_weight_only_tokens():
    """A whole int8 model compiled both ways (its decode steps weight-only, its prompt through
    the kernel) gives the greedy tokens of the same model with every quantized linear replaced
    by an fp32 linear holding its dequantized weight (tens of seconds of compiling)."""
    import copy

    from lmforge.compress import quantize_model
    from lmforge.config import ModelConfig
    from lmforge.generate import GenerationConfig, generate
    from lmforge.models import Transformer
    from lmforge.models.quant import quantized_modules

    torch.manual_seed(0)
    fp32 = Transformer(ModelConfig.from_preset("llama-tiny", n_layer=2)).eval()
    model = quantize_model(copy.deepcopy(fp32), "int8")
    plain = copy.deepcopy(model)
    for name, q in quantized_modules(plain).items():
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        lin.weight.data = q.dequantized_weight()
        if q.bias is not None:
            lin.bias.data = q.bias.data.clone()
        plain.set_submodule(name, lin)
    prompt = [[5, 6, 7, 8, 9, 10, 11]]
    gen = GenerationConfig(max_new_tokens=8, temperature=0.0)
    want = generate(plain, prompt, gen)
    for mode in ("whole", "regional"):
        assert generate(model, prompt, gen, compile=mode) == want, mode
