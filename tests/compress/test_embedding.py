"""Int8 token embeddings against the plain per-row rule."""

from __future__ import annotations

import torch

from lmforge.compress.embedding import Int8Embedding, quantize_embeddings, quantize_rows_int8
from lmforge.config import ModelConfig
from lmforge.models import Transformer


def test_rows_follow_the_symmetric_int8_rule():
    torch.manual_seed(0)
    w = torch.randn(50, 16)
    w[3] = 0.0
    q, s = quantize_rows_int8(w)
    for i in (0, 7, 49):
        scale = w[i].abs().max() / 127
        torch.testing.assert_close(s[i], scale)
        torch.testing.assert_close(q[i], torch.round(w[i] / scale).to(torch.int8))
    assert s[3] == 1.0 and bool((q[3] == 0).all())
    err = (q.float() * s[:, None] - w).abs().max(dim=1).values
    assert bool((err <= s / 2 + 1e-6).all())  # at most half a step per entry


def test_lookup_equals_the_dequantized_table_and_the_model_runs():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("bert-tiny", heads=("classify",), dropout=0.0, attn_dropout=0.0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    before = model(ids).logits
    assert quantize_embeddings(model) == ["embed.tok"]
    tok = model.embed.tok
    assert isinstance(tok, Int8Embedding) and tok.weight.dtype == torch.int8
    torch.testing.assert_close(tok(ids), tok.dequantized_weight()[ids])
    torch.testing.assert_close(model(ids).logits, before, atol=2e-2, rtol=0)
    assert set(model.state_dict()) >= {"embed.tok.weight", "embed.tok.scale"}


def test_a_table_tied_to_the_lm_head_is_left_alone():
    model = Transformer(ModelConfig.from_preset("gpt-tiny"))  # tied embeddings
    assert quantize_embeddings(model) == []
    assert isinstance(model.embed.tok, torch.nn.Embedding)
