"""A conformance suite every model family passes: shapes, KV cache = no cache, math = sdpa,
save/load round trip, attention weights that are distributions.

Families are presets of one `ModelConfig`, plus two positional/attention variants (ALiBi and a
sliding window) that no preset uses.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer, load_model, save_model

NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0}
CONFIGS = {
    "gpt-tiny": ModelConfig.from_preset("gpt-tiny", **NO_DROPOUT),
    "llama-tiny": ModelConfig.from_preset("llama-tiny", **NO_DROPOUT),
    "bert-tiny": ModelConfig.from_preset("bert-tiny", **NO_DROPOUT),
    "t5-tiny": ModelConfig.from_preset("t5-tiny", **NO_DROPOUT),
    "transformer-tiny": ModelConfig.from_preset("transformer-tiny", **NO_DROPOUT),
    # 6 heads: ALiBi's slopes for a head count that is not a power of two
    "alibi": ModelConfig.from_preset("gpt-tiny", pos="alibi", n_head=6, head_dim=16, **NO_DROPOUT),
    "sliding-window": ModelConfig.from_preset("llama-tiny", sliding_window=4, **NO_DROPOUT),
}
GENERATIVE = [name for name, cfg in CONFIGS.items() if cfg.arch != "encoder"]
B, S, T = 2, 9, 11  # batch, source length (encoder-decoder), length


def build(name: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(CONFIGS[name]).eval()
    # random biases and norm gains too, so that no parameter is a silent no-op
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(cfg: ModelConfig, length: int = T, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, length), generator=gen)


def left_padded(length: int) -> torch.Tensor:
    mask = torch.ones(B, length, dtype=torch.long)
    mask[1, :3] = 0
    return mask


def run(model: Transformer, x: torch.Tensor, mask: torch.Tensor | None = None, **kw):
    """Forward for any arch: an encoder-decoder translates x[:, :S] into x."""
    if model.cfg.arch == "encoder-decoder":
        src = x[:, :S] if x.size(1) >= S else x
        return model(src, decoder_input_ids=x, decoder_attention_mask=mask, **kw)
    return model(x, attention_mask=mask, **kw)


# ------------------------------------------------------------------ shapes
@torch.no_grad()
@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shapes(name):
    model = build(name)
    cfg = model.cfg
    x = batch(cfg)
    out = run(model, x)
    assert out.logits.shape == (B, T, cfg.vocab_size)
    assert out.hidden.shape == (B, T, cfg.d_model)
    if cfg.arch == "encoder-decoder":
        assert out.encoder_hidden.shape == (B, S, cfg.d_model)
    if "nsp" in cfg.heads:
        assert out.nsp_logits.shape == (B, 2)
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------ KV cache
@torch.no_grad()
@pytest.mark.parametrize("name", GENERATIVE)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
def test_kv_cache_decoding_equals_full_forward(name, padded):
    """Prefill 4 tokens, then decode one at a time: every step's logits equal the full pass."""
    model = build(name)
    cfg = model.cfg
    x = batch(cfg)
    mask = left_padded(T) if padded else None
    full = run(model, x, mask).logits
    src = x[:, :S]
    enc = model.encode(src).hidden if cfg.arch == "encoder-decoder" else None
    cache = model.new_cache(B, T)
    steps = []
    for start, end in [(0, 4)] + [(t, t + 1) for t in range(4, T)]:
        step_mask = None if mask is None else mask[:, :end]
        if cfg.arch == "encoder-decoder":
            out = model(
                src,
                decoder_input_ids=x[:, start:end],
                decoder_attention_mask=step_mask,
                encoder_hidden=enc,
                cache=cache,
            )
        else:
            out = model(x[:, start:end], attention_mask=step_mask, cache=cache)
        steps.append(out.logits)
    assert cache.length == T
    cached = torch.cat(steps, dim=1)
    keep = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    torch.testing.assert_close(cached[keep], full[keep], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ backends
@torch.no_grad()
@pytest.mark.parametrize("name", list(CONFIGS))
def test_math_backend_equals_sdpa(name):
    model = build(name)
    x = batch(model.cfg)
    right_padded = torch.ones(B, T, dtype=torch.long)
    right_padded[0, 7:] = 0
    for mask in (None, right_padded):
        model.set_attention_backend("sdpa")
        fast = run(model, x, mask).logits
        model.set_attention_backend("math")
        plain = run(model, x, mask).logits
        keep = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
        torch.testing.assert_close(plain[keep], fast[keep], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ save / load
@torch.no_grad()
@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_load_round_trip(tmp_path, name):
    model = build(name)
    x = batch(model.cfg)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.cfg == model.cfg
    assert torch.equal(run(loaded, x).logits, run(model, x).logits)
    if model.cfg.tie_embeddings and "lm" in model.cfg.heads:
        assert loaded.heads.lm_head.weight is loaded.embed.tok.weight  # still tied


# ------------------------------------------------------------------ attention weights
@torch.no_grad()
@pytest.mark.parametrize("name", list(CONFIGS))
def test_need_weights_returns_distributions(name):
    model = build(name)
    cfg = model.cfg
    x = batch(cfg)
    out = run(model, x, need_weights=True)
    n_layer = cfg.n_decoder_layer if cfg.arch == "encoder-decoder" else cfg.n_layer
    assert len(out.attentions) == n_layer
    for w in out.attentions:
        assert w.shape == (B, cfg.n_head, T, T)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, cfg.n_head, T))
        assert (w >= 0).all()
        if cfg.is_causal:  # no query attends to a later key
            assert (w.triu(diagonal=1) == 0).all()
        if cfg.sliding_window is not None:  # nor to one further back than the window
            assert (w.tril(diagonal=-cfg.sliding_window) == 0).all()
    # the weights come from the explicit path; its logits equal the fused path's
    torch.testing.assert_close(out.logits, run(model, x).logits, atol=1e-5, rtol=1e-5)
