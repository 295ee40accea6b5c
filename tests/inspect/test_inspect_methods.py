"""Attention maps for any backend, rollout, logit lens, direct logit attribution, activation
patching and integrated gradients, each against its plain formula or its defining property."""

from __future__ import annotations

import pytest
import torch
from inspect_helpers import CONFIGS, build, forward, ids

from lmforge.inspect import (
    InspectError,
    activation_patching,
    attention_patterns,
    attention_rollout,
    class_score,
    direct_logit_attribution,
    hooks,
    logit_lens,
    saliency,
    token_score,
)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_recomputed_patterns_equal_the_math_weights(name, backend):
    model = build(name)
    x = ids(model)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding in row 1
    kw = {"attention_mask": mask}
    if model.cfg.arch == "encoder-decoder":
        kw = {"decoder_input_ids": x}
    reference = forward(model, x, need_weights=True, **({} if "decoder_input_ids" in kw else kw))
    model.set_attention_backend(backend)
    stack = "decoder" if model.cfg.arch != "encoder" else "encoder"
    got = attention_patterns(model, x, layers=[-1, 0], heads=[1, 0], stack=stack, **kw)
    assert sorted(got) == [
        0,
        model.cfg.n_layer - 1
        if stack == "encoder" or model.cfg.arch == "decoder"
        else model.cfg.n_decoder_layer - 1,
    ]
    for layer, pattern in got.items():
        want = reference.attentions[layer][:, [1, 0]].float()
        torch.testing.assert_close(pattern, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))


def test_patterns_bad_index_is_clear():
    model = build("gpt-tiny")
    with pytest.raises(InspectError, match="head 7 does not exist"):
        attention_patterns(model, ids(model), heads=[7])


def rollout_reference(patterns, residual=0.5):
    """Element by element: R = prod_l (residual I + (1-residual) mean_h A_l), rows renormalised."""
    b, _, t, _ = patterns[0].shape
    out = torch.zeros(b, t, t)
    for bi in range(b):
        r = [[float(i == j) for j in range(t)] for i in range(t)]
        for a in patterns:
            step = [
                [
                    residual * (i == j) + (1 - residual) * float(a[bi, :, i, j].mean())
                    for j in range(t)
                ]
                for i in range(t)
            ]
            step = [[v / sum(row) for v in row] for row in step]
            r = [[sum(step[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
        out[bi] = torch.tensor(r)
    return out


def test_rollout_matches_the_formula():
    model = build("gpt-tiny")
    x = ids(model, length=6)
    pats = attention_patterns(model, x)
    got = attention_rollout([pats[i] for i in sorted(pats)])
    torch.testing.assert_close(
        got, rollout_reference([pats[i] for i in sorted(pats)]), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 6))
    # causal: no position draws on a later token
    assert torch.all(got.triu(1) == 0)


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "bert-tiny"])
def test_logit_lens_last_layer_is_the_logits(name):
    model = build(name)
    x = ids(model)
    lens = logit_lens(model, x)
    assert lens.logits.shape[0] == model.cfg.n_layer + 1
    assert lens.layer_names[0] == "embed"
    torch.testing.assert_close(lens.logits[-1], model(x).logits.float(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
def test_direct_logit_attribution_adds_up(name):
    model = build(name)
    x = ids(model, batch=1)
    with torch.no_grad():
        logits = model(x).logits[0, -1]
    token, other = int(logits.argmax()), int(logits.argmin())
    attr = direct_logit_attribution(model, x, token, other=other)
    assert attr.total == pytest.approx(float(logits[token] - logits[other]), abs=1e-4)
    assert float(attr.values.sum()) == pytest.approx(attr.total, abs=1e-3)
    grid = attr.per_head(model.cfg.n_layer, model.cfg.n_head)
    assert grid.shape == (model.cfg.n_layer, model.cfg.n_head)
    with pytest.raises(InspectError, match="pre-norm"):
        direct_logit_attribution(build("bert-tiny"), ids(build("bert-tiny"), batch=1), 3)


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "bert-tiny"])
def test_patching_every_position_restores_the_clean_logits(name):
    model = build(name)
    clean, corrupt = ids(model, batch=1, seed=1), ids(model, batch=1, seed=2)
    clean_logits = model(clean).logits
    for site in ("resid_pre", "resid_post"):
        for layer in range(model.cfg.n_layer):
            from lmforge.inspect import run_with_cache

            _, cache = run_with_cache(model, clean, names=[f"blocks.{layer}.{site}"])
            with hooks(model, {f"blocks.{layer}.{site}": lambda a, n, c=cache: c[n]}):
                patched = model(corrupt).logits
            torch.testing.assert_close(patched, clean_logits, rtol=0, atol=0)


def test_patching_grid():
    model = build("gpt-tiny")
    clean, corrupt = ids(model, batch=1, seed=1), ids(model, batch=1, seed=2)
    logits = model(clean).logits[0, -1]
    answer, wrong = int(logits.argmax()), int(logits.argmin())
    res = activation_patching(model, clean, corrupt, answer, wrong, site="resid_pre", batch_size=4)
    t = clean.size(1)
    assert res.scores.shape == (model.cfg.n_layer, t)
    # in a causal model the last block's output at the last position is the whole answer
    last = activation_patching(model, clean, corrupt, answer, wrong, site="resid_post")
    assert float(last.scores[-1, -1]) == pytest.approx(1.0, abs=1e-5)
    assert float(last.metric[-1, -1]) == pytest.approx(last.clean, abs=1e-4)
    heads = activation_patching(model, clean, corrupt, answer, wrong, site="attn.z")
    assert heads.scores.shape == (model.cfg.n_layer, model.cfg.n_head)
    with pytest.raises(InspectError, match="same length"):
        activation_patching(model, clean, corrupt[:, :-1], answer, wrong)


def test_integrated_gradients_are_complete_within_one_percent():
    model = build("bert-tiny", num_labels=3, heads=["classify"])
    x = ids(model, batch=1, length=12)
    result = saliency(model, x, class_score(1), steps=64)
    gap = result.f_input - result.f_baseline
    assert abs(gap) > 1e-3
    assert abs(result.delta) <= 0.01 * abs(gap), (result.delta, gap)
    assert result.scores.shape == (12,)


def test_integrated_gradients_for_a_verbalizer_score_on_a_causal_lm():
    model = build("llama-tiny")
    x = ids(model, batch=1, length=8)
    result = saliency(model, x, token_score([7, 9]), steps=64)
    gap = result.f_input - result.f_baseline
    assert abs(result.delta) <= 0.01 * abs(gap), (result.delta, gap)


def test_gradient_x_input_is_the_first_order_term():
    model = build("gpt-tiny")
    x = ids(model, batch=1, length=6)
    result = saliency(model, x, token_score(5), method="grad_x_input")
    # reference by autograd on the embedding table rows, written out
    emb = model.embed.tok(x)[0].detach().requires_grad_(True)
    with hooks(model, {"embed": lambda e, n: emb[None]}):
        s = token_score(5)(model(x).logits)[0]
    (g,) = torch.autograd.grad(s, emb)
    torch.testing.assert_close(result.scores, (g * emb).sum(-1).detach())


def test_integrated_gradients_match_captum():
    """Same path, same quadrature (Gauss-Legendre, 64 points) as captum's IntegratedGradients
    on the token embeddings."""
    from captum.attr import IntegratedGradients

    model = build("bert-tiny", num_labels=3, heads=["classify"])
    x = ids(model, batch=1, length=9)
    ours = saliency(model, x, class_score(2), steps=64)

    def f(emb):
        with hooks(model, {"embed": lambda _e, _n: emb}):
            return model(x.expand(emb.size(0), -1)).logits[:, 2]

    emb = model.embed.tok(x).detach()
    ref = IntegratedGradients(f).attribute(
        emb, baselines=torch.zeros_like(emb), n_steps=64, method="gausslegendre",
        internal_batch_size=16,
    )  # fmt: skip
    torch.testing.assert_close(ours.scores, ref.sum(-1)[0], atol=1e-5, rtol=1e-4)
