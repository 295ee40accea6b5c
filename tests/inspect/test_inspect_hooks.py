"""Hook points: the cache equals a plain forward, an identity hook changes nothing, a head
ablation by hook equals zeroed output weights; LoRA and module swaps are hooked alike."""

from __future__ import annotations

import pytest
import torch
from inspect_helpers import CONFIGS, build, forward, ids

from lmforge.inspect import InspectError, hook_points, hooks, run_with_cache
from lmforge.peft.lora import LoRAConfig, apply_lora

FAMILIES = list(CONFIGS)


@pytest.mark.parametrize("name", FAMILIES)
def test_cache_matches_plain_forward(name):
    model = build(name)
    x = ids(model)
    fused = forward(model, x)
    kw = {"decoder_input_ids": x} if model.cfg.arch == "encoder-decoder" else {}
    out, cache = run_with_cache(model, x, names=lambda n: not n.endswith("pattern"), **kw)
    assert torch.equal(out.logits, fused.logits)
    # caching attn.pattern too needs the weights: those layers take the explicit-math path
    out_all, cache_all = run_with_cache(model, x, **kw)
    torch.testing.assert_close(out_all.logits, fused.logits, rtol=1e-5, atol=1e-5)
    points = hook_points(model)
    assert set(cache_all) == set(points)
    prefix = "decoder." if model.cfg.arch == "encoder-decoder" else ""
    n = model.cfg.n_decoder_layer if prefix else model.cfg.n_layer
    # each block's input is the previous block's output
    for i in range(1, n):
        torch.testing.assert_close(
            cache[f"{prefix}blocks.{i}.resid_pre"], cache[f"{prefix}blocks.{i - 1}.resid_post"]
        )
    assert torch.equal(cache["logits"], fused.logits)
    assert cache[f"{prefix}blocks.{n - 1}.resid_post"].shape[-1] == model.cfg.d_model
    # the token embeddings are W_E[x]
    torch.testing.assert_close(cache["embed"], model.embed.tok.weight[x])
    assert cache[f"{prefix}blocks.0.attn.z"].shape[-2:] == (model.cfg.n_head, model.cfg.head_dim)


def test_cached_parts_sum_to_the_residual():
    """Pre-norm: resid_post = resid_pre + attn.out + mlp.out (dropout off)."""
    model = build("llama-tiny")
    _, cache = run_with_cache(model, ids(model))
    for i in range(model.cfg.n_layer):
        p = f"blocks.{i}."
        torch.testing.assert_close(
            cache[p + "resid_post"],
            cache[p + "resid_pre"] + cache[p + "attn.out"] + cache[p + "mlp.out"],
        )
        # z through W^O is attn.out
        attn = model.decoder.layers[i].attn
        torch.testing.assert_close(
            attn.o_proj(cache[p + "attn.z"].flatten(-2)), cache[p + "attn.out"]
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_identity_hooks_change_nothing(name):
    model = build(name)
    x = ids(model)
    plain = forward(model, x).logits
    seen = []

    def identity(t, hook_name):
        seen.append(hook_name)
        return t.clone()

    def keep(t, hook_name):
        return None

    names = [n for n in hook_points(model) if not n.endswith("attn.pattern")]
    with hooks(model, {n: [identity, keep] for n in names}):
        hooked = forward(model, x).logits
    assert torch.equal(hooked, plain)
    assert set(seen) == set(names)
    # a hook on the pattern needs the weights, so those layers take the explicit-math path,
    # equal to the fused one within rounding
    with hooks(model, {"*": identity}):
        all_hooked = forward(model, x).logits
    assert any(n.endswith("attn.pattern") for n in seen)
    torch.testing.assert_close(all_hooked, plain, atol=1e-5, rtol=1e-5)
    # hooks are gone afterwards
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["llama-tiny", "t5-tiny", "alibi"])
def test_cached_pattern_is_the_attention_weights(name):
    model = build(name)
    x = ids(model)
    kw = {"decoder_input_ids": x} if model.cfg.arch == "encoder-decoder" else {}
    prefix = "decoder." if kw else ""
    want = forward(model, x, need_weights=True).attentions
    _, cache = run_with_cache(model, x, names=[f"{prefix}blocks.*.attn.pattern"], **kw)
    for i, w in enumerate(want):
        torch.testing.assert_close(cache[f"{prefix}blocks.{i}.attn.pattern"], w)


def test_zeroing_a_pattern_row_equals_zeroing_that_head():
    model = build("llama-tiny")
    x = ids(model)
    head = 1

    def zero_pattern(p, _):
        p = p.clone()
        p[:, head] = 0
        return p

    def zero_z(z, _):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with hooks(model, {"blocks.0.attn.pattern": zero_pattern}):
        a = model(x).logits
    with hooks(model, {"blocks.0.attn.z": zero_z}):
        b = model(x).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "bert-tiny"])
def test_zeroing_a_head_equals_zeroed_output_weights(name):
    model = build(name)
    x = ids(model)
    layer, head, hd = 1, model.cfg.n_head - 1, model.cfg.head_dim

    def ablate(z, _):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with hooks(model, {f"blocks.{layer}.attn.z": ablate}):
        hooked = forward(model, x).logits
    stack = model.encoder if model.cfg.arch == "encoder" else model.decoder
    with torch.no_grad():
        stack.layers[layer].attn.o_proj.weight[:, head * hd : (head + 1) * hd] = 0
    edited = forward(model, x).logits
    torch.testing.assert_close(hooked, edited)
    assert not torch.allclose(hooked, build(name)(x).logits)


def test_hooks_see_lora_and_swapped_linears():
    model = build("llama-tiny")
    apply_lora(model, LoRAConfig(r=4, targets=["*.q_proj", "*.v_proj", "*.o_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    x = ids(model)
    plain = model(x).logits
    out, cache = run_with_cache(model, x, names=["blocks.0.resid_pre", "blocks.0.attn.q"])
    torch.testing.assert_close(out.logits, plain)
    attn = model.decoder.layers[0].attn
    h = model.decoder.layers[0].attn_norm(cache["blocks.0.resid_pre"])
    merged = attn.q_proj.weight + attn.q_proj.delta_weight()  # W + (alpha/r) B A
    expected = torch.nn.functional.linear(h, merged).unflatten(-1, (model.cfg.n_head, -1))
    torch.testing.assert_close(cache["blocks.0.attn.q"], expected)
    base_only = torch.nn.functional.linear(h, attn.q_proj.weight).unflatten(
        -1, (model.cfg.n_head, -1)
    )
    assert not torch.allclose(cache["blocks.0.attn.q"], base_only)

    # a module swap of nn.Linear (what quantization does) is hooked at its new place
    class Swapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t) + 1.0

    block = model.decoder.layers[1]
    block.mlp.gate_proj = Swapped(block.mlp.gate_proj)
    _, cache2 = run_with_cache(model, x, names=["blocks.1.mlp.pre", "blocks.1.resid_mid"])
    h2 = block.mlp_norm(cache2["blocks.1.resid_mid"])
    torch.testing.assert_close(cache2["blocks.1.mlp.pre"], block.mlp.gate_proj(h2))


def test_unknown_name_is_a_clear_error():
    model = build("gpt-tiny")
    with pytest.raises(InspectError, match="did you mean 'blocks.0.attn.z'"):
        run_with_cache(model, ids(model), names=["blocks.0.atn.z"])


def test_cache_stack_helper():
    model = build("gpt-tiny")
    _, cache = run_with_cache(model, ids(model), names=["blocks.*.resid_post", "blocks.*.attn.z"])
    assert cache.stack("resid_post").shape == (model.cfg.n_layer, 2, 10, model.cfg.d_model)
    assert cache.stack("attn.z").shape[0] == model.cfg.n_layer
    with pytest.raises(InspectError):
        cache.stack("mlp.out")
