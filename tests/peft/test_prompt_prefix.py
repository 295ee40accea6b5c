"""Prompt tuning and prefix tuning: shapes, what trains, exact equivalences, KV cache, disk."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import AdapterError
from lmforge.generate import GenerationConfig, generate
from lmforge.models import Transformer, load_model, save_model
from lmforge.peft import (
    LoRAConfig,
    Prefix,
    SoftPrompt,
    apply_lora,
    apply_prefix_tuning,
    apply_prompt_tuning,
    count_trainable,
    fold_prefix,
    load_adapter,
    lora_modules,
    peft_configs,
    save_adapter,
)
from lmforge.peft.prompt import real_kv

PRESETS = ["gpt-tiny", "llama-tiny", "bert-tiny", "t5-tiny"]
GENERATIVE = ["gpt-tiny", "llama-tiny", "t5-tiny"]
B, S, T, N = 2, 9, 11, 5  # batch, source length, length, virtual tokens


def tiny(preset: str, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset(preset, dropout=0.0, attn_dropout=0.0, **kw)).eval()


def attach(model: Transformer, method: str, **kw) -> Transformer:
    torch.manual_seed(3)
    if method == "prompt":
        return apply_prompt_tuning(model, N, **kw)
    return apply_prefix_tuning(model, N, **kw)


def tokens(cfg: ModelConfig, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, cfg.vocab_size, (B, length), generator=torch.Generator().manual_seed(seed)
    )


def run(model: Transformer, x: torch.Tensor, mask: torch.Tensor | None = None, **kw):
    if model.cfg.arch == "encoder-decoder":
        return model(x[:, :S], decoder_input_ids=x, decoder_attention_mask=mask, **kw)
    return model(x, attention_mask=mask, **kw)


def left_padded(length: int = T) -> torch.Tensor:
    mask = torch.ones(B, length, dtype=torch.long)
    mask[1, :3] = 0
    return mask


# ------------------------------------------------------------------ shapes, what trains
@torch.no_grad()
@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("preset", PRESETS)
def test_shapes_unchanged_and_only_new_parameters_train(preset, method):
    model = tiny(preset)
    x = tokens(model.cfg)
    base = run(model, x)
    attach(model, method)
    out = run(model, x)
    assert out.logits.shape == base.logits.shape
    assert out.hidden.shape == base.hidden.shape
    if model.cfg.arch == "encoder-decoder":
        assert out.encoder_hidden.shape == base.encoder_hidden.shape
    assert torch.isfinite(out.logits).all()
    assert (out.logits - base.logits).abs().max() > 1e-4  # the adapter does act
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "prompt":
        assert trainable == {"prompt.embedding"}
        assert count_trainable(model) == N * model.cfg.d_model
    else:
        stacks = [s for s in ("encoder", "decoder") if hasattr(model, s)]
        assert trainable == {f"{s}.prefix.kv" for s in stacks}
        per_stack = [len(getattr(model, s).layers) for s in stacks]
        c = model.cfg
        assert count_trainable(model) == sum(
            2 * L * c.n_kv_head * N * c.head_dim for L in per_stack
        )


@torch.no_grad()
@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("preset", PRESETS)
def test_math_backend_equals_sdpa_with_padding(preset, method):
    model = attach(tiny(preset), method)
    x = tokens(model.cfg)
    mask = left_padded() if model.cfg.is_causal else torch.ones(B, T, dtype=torch.long)
    if not model.cfg.is_causal:
        mask[0, 7:] = 0  # right padding for an encoder
    model.set_attention_backend("sdpa")
    fast = run(model, x, mask).logits
    model.set_attention_backend("math")
    out = run(model, x, mask, need_weights=True)
    keep = mask.bool()
    torch.testing.assert_close(out.logits[keep], fast[keep], atol=1e-5, rtol=1e-5)
    extra = N if method == "prefix" else 0
    # a soft prompt's virtual tokens are keys of the stack it is in (not of the T5 decoder's)
    rows = T + (N if method == "prompt" and model.cfg.arch != "encoder-decoder" else 0)
    w = out.attentions[0]
    assert w.shape[-1] == rows + extra
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


# ------------------------------------------------------------------ exact equivalences
@torch.no_grad()
def test_prompt_from_token_ids_equals_those_tokens_in_the_input():
    """RoPE depends on position differences: virtual tokens that are the embeddings of ids p act
    exactly like p written in front of the input (and real tokens' outputs do not move)."""
    model = tiny("llama-tiny")
    p = [7, 8, 9, 10, 11]
    x = tokens(model.cfg)
    joined = torch.cat([torch.tensor([p] * B), x], dim=1)
    want = model(joined).logits[:, N:]
    apply_prompt_tuning(model, N, init=p)
    torch.testing.assert_close(model(x).logits, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_prefix_of_real_keys_values_equals_those_tokens_as_context():
    """Without positional encodings, a decoder whose prefix holds the keys and values of tokens
    p sees exactly the context p (Li & Liang's real-word initialisation)."""
    model = tiny("llama-tiny", pos="none")
    p = torch.tensor([7, 8, 9, 10, 11])
    x = tokens(model.cfg)
    want = model(torch.cat([p.expand(B, N), x], dim=1)).logits[:, N:]
    kv = real_kv(model, ["decoder"], p)["decoder"]
    apply_prefix_tuning(model, N, init="random")
    model.decoder.prefix.kv.copy_(kv)
    torch.testing.assert_close(model(x).logits, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ KV cache and generation
@torch.no_grad()
@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("preset", GENERATIVE)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
def test_kv_cache_decoding_equals_full_forward(preset, method, padded):
    model = attach(tiny(preset), method)
    x = tokens(model.cfg)
    mask = left_padded() if padded else None
    full = run(model, x, mask).logits
    enc = model.encode(x[:, :S]).hidden if model.cfg.arch == "encoder-decoder" else None
    cache = model.new_cache(B, T)
    steps = []
    for start, end in [(0, 4)] + [(t, t + 1) for t in range(4, T)]:
        step_mask = None if mask is None else mask[:, :end]
        if enc is not None:
            out = model(
                x[:, :S],
                decoder_input_ids=x[:, start:end],
                decoder_attention_mask=step_mask,
                encoder_hidden=enc,
                cache=cache,
            )
        else:
            out = model(x[:, start:end], attention_mask=step_mask, cache=cache)
        steps.append(out.logits)
    keep = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[keep], full[keep], atol=1e-5, rtol=1e-5)


def greedy_without_cache(model: Transformer, prompt: list[int], n_new: int) -> list[int]:
    """Recompute the whole sequence for every new token."""
    seq = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            if model.cfg.arch == "encoder-decoder":
                start = model.cfg.decoder_start_id
                dec = torch.tensor([[start] + out])
                logits = model(torch.tensor([seq]), decoder_input_ids=dec).logits
            else:
                logits = model(torch.tensor([seq + out])).logits
            out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize(
    "preset,method",
    [
        ("gpt-tiny", "prefix"),
        ("llama-tiny", "prefix"),
        ("t5-tiny", "prefix"),
        ("gpt-tiny", "prompt"),
        ("llama-tiny", "prompt"),
        ("t5-tiny", "prompt"),
    ],
)
def test_greedy_generation_with_cache_equals_recomputation(preset, method):
    start = {"decoder_start_id": 0} if preset == "t5-tiny" else {}
    model = attach(tiny(preset, **start), method)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # different lengths: left padding
    gen = GenerationConfig(max_new_tokens=8, temperature=0.0)
    got = generate(model, prompts, gen)
    want = [greedy_without_cache(model, p, 8) for p in prompts]
    assert got == want


# ------------------------------------------------------------------ reparameterisation, disk
@torch.no_grad()
def test_prefix_mlp_reparameterisation_folds_to_the_same_prefix():
    model = attach(tiny("gpt-tiny"), "prefix", reparam_hidden=32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "decoder.prefix.embedding",
        "decoder.prefix.mlp.0.weight",
        "decoder.prefix.mlp.0.bias",
        "decoder.prefix.mlp.2.weight",
        "decoder.prefix.mlp.2.bias",
    }
    x = tokens(model.cfg)
    before = model(x).logits
    fold_prefix(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"decoder.prefix.kv"}
    assert peft_configs(model)["prefix"].reparam_hidden is None
    torch.testing.assert_close(model(x).logits, before, atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize(
    "preset,methods",
    [
        ("bert-tiny", ["prompt"]),
        ("t5-tiny", ["prefix"]),
        ("llama-tiny", ["lora", "prefix", "prompt"]),
    ],
)
def test_save_and_load_adapter_round_trip(tmp_path, preset, methods):
    model = tiny(preset)
    save_model(model, tmp_path / "base")
    for m in methods:
        if m == "lora":
            apply_lora(model, LoRAConfig(r=2))
            for layer in lora_modules(model).values():
                layer.lora_B.normal_()
        else:
            attach(model, m)
    x = tokens(model.cfg)
    want = run(model, x).logits
    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(load_model(tmp_path / "base"), tmp_path / "adapter")
    assert list(peft_configs(fresh)) == methods
    assert torch.equal(run(fresh, x).logits, want)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    assert isinstance(fresh.prompt, SoftPrompt) == ("prompt" in methods)
    assert any(isinstance(m, Prefix) for m in fresh.modules()) == ("prefix" in methods)


def test_clear_errors():
    with pytest.raises(AdapterError, match="no encoder stack"):
        apply_prefix_tuning(tiny("gpt-tiny"), 4, stacks=["encoder"])
    with pytest.raises(AdapterError, match="already has a prompt adapter"):
        apply_prompt_tuning(apply_prompt_tuning(tiny("gpt-tiny"), 4), 4)
    with pytest.raises(AdapterError, match="needs an lmforge Transformer"):
        apply_prompt_tuning(torch.nn.Linear(2, 2), 4)
    with pytest.raises(AdapterError, match="n_tokens must be at least 1"):
        apply_prefix_tuning(tiny("gpt-tiny"), 0)
    with pytest.raises(AdapterError, match="one id per virtual token"):
        apply_prompt_tuning(tiny("gpt-tiny"), 4, init=[1, 2])
