"""The chunked LM-head cross-entropy equals F.cross_entropy on the full logits (value and
gradients), and the causal-LM / SFT objectives give the same loss through either path."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer
from lmforge.objectives import CausalLMLoss, TaskObjective
from lmforge.objectives.chunked import lm_head_cross_entropy, reference_lm_head_cross_entropy
from lmforge.objectives.lm import IGNORE


def _inputs(n=37, d=16, v=101, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5
    y = torch.randint(0, v, (n,), generator=gen)
    y[::5] = IGNORE
    return h, w, y


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("rows", [1, 8, 37, 100])
def test_value_and_gradients_match_full_logits(smoothing, rows):
    h, w, y = _inputs()
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = reference_lm_head_cross_entropy(h1, w1, y, label_smoothing=smoothing)  # float64
    (ref * 3.0).backward()
    loss, hits = lm_head_cross_entropy(h2, w2, y, label_smoothing=smoothing, rows=rows)
    (loss * 3.0).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-10, atol=1e-12)
    z = h @ w.t()
    keep = y != IGNORE
    assert int(hits) == int((z.argmax(-1)[keep] == y[keep]).sum())


def test_float32_reference_and_a_tied_weight_used_twice():
    h, w, y = (t.float() if t.is_floating_point() else t for t in _inputs(seed=1))
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    ref = reference_lm_head_cross_entropy(h @ w1[:16].t() * 0.1, w1, y)  # w used twice
    ref.backward()
    loss, _ = lm_head_cross_entropy(h @ w2[:16].t() * 0.1, w2, y, rows=5)
    loss.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_gives_the_loss_and_bf16_autocast_is_close():
    h, w, y = (t.float() if t.is_floating_point() else t for t in _inputs(seed=2))
    with torch.no_grad():
        loss, _ = lm_head_cross_entropy(h, w, y, rows=7)
    torch.testing.assert_close(loss, reference_lm_head_cross_entropy(h, w, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hb = h.clone().requires_grad_()
        loss_b, _ = lm_head_cross_entropy(hb, w, y, rows=7)
    loss_b.backward()
    assert loss_b.dtype == torch.float32 and hb.grad.dtype == torch.float32
    torch.testing.assert_close(loss_b, loss, rtol=2e-2, atol=2e-2)


def test_all_rows_ignored_is_nan_like_f_cross_entropy():
    h, w, _ = _inputs()
    y = torch.full((h.size(0),), IGNORE)
    loss, hits = lm_head_cross_entropy(h, w, y)
    assert torch.isnan(loss) and torch.isnan(reference_lm_head_cross_entropy(h, w, y))
    assert int(hits) == 0


def test_bad_shapes_are_one_sentence():
    h, w, y = _inputs()
    with pytest.raises(ValueError, match=r"\(N, d\) hidden states"):
        lm_head_cross_entropy(h[None], w, y)


def _llama(tie: bool):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("llama-tiny", vocab_size=300, tie_embeddings=tie)
    return Transformer(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_causal_lm_objective_chunked_equals_full(tie):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (3, 21), generator=gen)
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:].clone()}
    batch["labels"][0, :4] = IGNORE
    grads = []
    for loss_fn in (CausalLMLoss(chunk_vocab=0), CausalLMLoss(chunk_vocab=256, chunk_rows=16)):
        model = _llama(tie)
        out = loss_fn(model, batch)
        out.loss.backward()
        grads.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, g_full), (chunked, g_chunked) = grads
    assert full.n_tokens == chunked.n_tokens == 56
    torch.testing.assert_close(chunked.loss, full.loss)
    for name, g in g_full.items():
        torch.testing.assert_close(g_chunked[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_causal_lm_objective_uses_the_chunked_path_only_above_the_threshold(monkeypatch):
    calls = []
    import lmforge.objectives.lm as lm

    real = lm.lm_head_cross_entropy
    monkeypatch.setattr(
        lm, "lm_head_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ids = torch.randint(0, 300, (2, 9))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    CausalLMLoss(chunk_vocab=301)(_llama(True), batch)
    assert calls == []
    CausalLMLoss(chunk_vocab=300)(_llama(True), batch)
    assert calls == [1]
    CausalLMLoss(chunk_vocab=300)(torch.compile(_llama(True), backend="eager"), batch)
    assert calls == [1, 1]


def test_sft_objective_chunked_equals_full():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (2, 12), generator=gen)
    labels = ids.clone()
    labels[:, :5] = IGNORE
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    full = TaskObjective("sft")(_llama(False), batch)
    chunked = TaskObjective("sft", chunk_vocab=256)(_llama(False), batch)
    assert full.n_tokens == chunked.n_tokens == 14
    torch.testing.assert_close(chunked.loss, full.loss)
    assert chunked.metrics["token_acc"] == pytest.approx(full.metrics["token_acc"])


def test_a_negative_threshold_is_one_sentence():
    from lmforge.config.train import TrainConfig
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="chunked_ce_vocab must be at least 0"):
        TrainConfig(chunked_ce_vocab=-1)
    assert TrainConfig().chunked_ce_vocab == CausalLMLoss().chunk_vocab == 0
