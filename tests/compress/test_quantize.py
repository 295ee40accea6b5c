"""Quantized linears: the fast kernels against the plain dequantize-then-matmul rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.compress.quantize import (
    DynamicInt8Linear,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    prepare_quantized,
    quantize_int4,
    quantize_int8,
    quantize_model,
    quantized_modules,
    unpack_int4,
)
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models import Transformer
from lmforge.models.quant import KERNEL_ROWS


def _linear(d_in: int, d_out: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.2, 5.0, d_out)[:, None])  # rows of different ranges
    return lin


def test_int8_formula():
    w = _linear(64, 32).weight
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    # each row's largest weight maps to +-127, and w = q s up to half a step
    torch.testing.assert_close(s, w.abs().amax(1) / 127)
    assert (q.abs().amax(1) == 127).all()
    assert ((dequantize_int8(q, s) - w).abs() <= s[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_formula(group_size):
    w = _linear(256, 48).weight
    q, s, z = quantize_int4(w, group_size)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    assert s.shape == z.shape == (48, 256 // group_size)
    w_hat = dequantize_int4(q, s, z)
    steps = s.repeat_interleave(group_size, dim=1)
    assert ((w_hat - w).abs() <= steps / 2 + 1e-5).all()
    # the group's minimum and maximum are represented (up to float rounding)
    wg = w.reshape(48, -1, group_size)
    torch.testing.assert_close(w_hat.reshape(48, -1, group_size).amin(-1), wg.amin(-1))
    torch.testing.assert_close(w_hat.reshape(48, -1, group_size).amax(-1), wg.amax(-1))
    assert torch.equal(unpack_int4(pack_int4(q)), q)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_kernel_matches_reference(bias, dtype):
    """More than KERNEL_ROWS rows (evaluation, training batches): weight-only."""
    lin = _linear(96, 80, bias)
    m = Int8Linear.from_linear(lin)
    rows = KERNEL_ROWS // 2 + 1
    x = torch.randn(2, rows, 96).to(dtype)
    with torch.no_grad():
        want = x.float() @ dequantize_int8(m.weight, m.scales).T
        if bias:
            want = want + lin.bias
        got = m(x)
    assert got.shape == (2, rows, 80) and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want, atol=tol * want.abs().max(), rtol=tol)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bias", [True, False])
def test_int4_kernel_matches_reference(group_size, bias):
    lin = _linear(256, 48, bias)
    m = Int4Linear.from_linear(lin, group_size)
    q, s, z = quantize_int4(lin.weight, group_size)
    x = torch.randn(3, KERNEL_ROWS // 3 + 1, 256)  # more than KERNEL_ROWS rows: weight-only
    with torch.no_grad():
        want = x @ dequantize_int4(q, s, z).T + (lin.bias if bias else 0)
        got = m(x)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max(), rtol=1e-4)
    # and the weight-only int4 output is near the float layer's
    err = (got - lin(x)).abs().max() / lin(x).abs().max()
    assert 0 < err < 0.1


def test_dynamic_int8_kernel_matches_reference():
    lin = _linear(128, 64)
    m = DynamicInt8Linear.from_linear(lin)
    x = torch.randn(4, 9, 128) * 3
    with torch.no_grad():
        scale, zero = torch._choose_qparams_per_tensor(x, True)
        x_hat = ((torch.round(x / scale) + zero).clamp(0, 127) - zero) * scale
        want = x_hat @ dequantize_int8(m.weight, m.scales).T + lin.bias
        got = m(x)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max(), rtol=1e-4)


def test_training_mode_uses_the_plain_rule_with_gradients():
    """Autograd goes through the dequantized weight (QLoRA: the base is frozen)."""
    for m in (Int8Linear.from_linear(_linear(64, 32)), Int4Linear.from_linear(_linear(64, 32), 32)):
        x = torch.randn(2, 64, requires_grad=True)
        m(x).sum().backward()
        torch.testing.assert_close(x.grad, m.dequantized_weight().sum(0).expand(2, -1))
        assert not any(p.requires_grad for p in m.parameters())


def _llama(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("llama-tiny", **kw)).eval()


@pytest.mark.parametrize(
    ("method", "tol"), [("int8", 0.02), ("int4", 0.15), ("dynamic-int8", 0.05)]
)
def test_quantize_model_swaps_linears_and_stays_close(method, tol):
    model = _llama()
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_model(model, method, group_size=32)
        got = model(ids).logits
    swapped = quantized_modules(model)
    assert sorted(swapped) == sorted(model.quantization["modules"])
    assert "heads.lm_head" in swapped and "decoder.layers.0.attn.q_proj" in swapped
    if method == "int4":  # d_ff = 176 is not a multiple of 32: down_proj stays float
        assert "decoder.layers.0.mlp.down_proj" not in swapped
        assert type(model.get_submodule("decoder.layers.0.mlp.down_proj")) is nn.Linear
    rel = (got - ref).abs().max() / ref.abs().max()
    assert 0 < rel < tol, rel


def test_skip_and_bad_input():
    model = quantize_model(_llama(), "int8", skip=["lm_head", "*.o_proj"])
    names = model.quantization["modules"]
    assert "heads.lm_head" not in names and not any(n.endswith("o_proj") for n in names)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, "int8")
    with pytest.raises(ConfigError, match="unknown quantization method"):
        quantize_model(_llama(), "int3")
    with pytest.raises(ConfigError, match="group size"):
        quantize_model(_llama(), "int4", group_size=48)
    with pytest.raises(ConfigError, match="no linear layer"):
        quantize_model(_llama(), "int8", skip=["*"])


@pytest.mark.parametrize("method", ["int8", "int4", "dynamic-int8"])
def test_state_dict_round_trip_rebuilds_kernels(method):
    model = quantize_model(_llama(), method, group_size=32)
    state = model.state_dict()
    assert all(not isinstance(v, torch.ScriptObject) for v in state.values())
    fresh = prepare_quantized(_llama(), model.quantization)
    fresh.load_state_dict(state)
    ids = torch.randint(0, 512, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_generate_decodes_through_the_quantized_modules(method, monkeypatch):
    """The cached decode step (the one every decode path uses) equals greedy on full forwards.

    Each row gets its own activation scale here (`chunk_rows = 1`), so a row's output does not
    depend on which rows share its kernel call (a prompt's rows, or a full forward's)."""
    from lmforge.generate import GenerationConfig, generate

    monkeypatch.setattr(Int8Linear, "chunk_rows", 1)
    model = quantize_model(_llama(), method, group_size=32)
    prompt = torch.randint(0, 512, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (new,) = generate(model, prompt, GenerationConfig(max_new_tokens=6, temperature=0))
        seq = prompt
        for _ in range(6):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert new == seq[0, 7:].tolist()


def test_dynamic_int8_bert_classifier_saves_and_loads(tmp_path):
    from lmforge.models import load_model, save_model

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("bert-tiny", heads=("classify",), num_labels=3)
    model = Transformer(cfg).eval()
    ids = torch.randint(5, 512, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids).logits
        quantize_model(model, "dynamic-int8")
        got = model(ids).logits
    assert "heads.classifier" in model.quantization["modules"]
    assert ((got - want).abs().max() / want.abs().max()) < 0.05
    save_model(model, tmp_path / "q")
    back = load_model(tmp_path / "q")
    assert all(isinstance(m, DynamicInt8Linear) for m in quantized_modules(back).values())
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, got)
