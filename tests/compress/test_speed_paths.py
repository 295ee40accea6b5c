"""What the compressed models' inference relies on: one dense attention mask per forward."""

from __future__ import annotations

import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer
from lmforge.models.masks import AttentionMask


@torch.no_grad()
def test_a_padded_forward_builds_its_attention_mask_once(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("bert-tiny", dropout=0.0, attn_dropout=0.0)).eval()
    ids = torch.randint(5, 100, (3, 7))
    keep = torch.ones(3, 7, dtype=torch.long)
    keep[1, 4:] = 0
    keep[2, 2:] = 0
    calls = []
    block = AttentionMask.block

    def counted(self, *args, **kw):
        calls.append(1)
        return block(self, *args, **kw)

    want = model(ids, attention_mask=keep).logits  # before: the reference
    monkeypatch.setattr(AttentionMask, "block", counted)
    got = model(ids, attention_mask=keep).logits
    assert len(calls) == 1 and model.cfg.n_layer > 1
    torch.testing.assert_close(got, want)
    # the plain rule: the mask is the one block() builds, reused
    mask = AttentionMask(torch.arange(7), torch.arange(7), False, key_keep=keep.bool())
    first = mask.dense(torch.float32)
    assert mask.dense(torch.float32) is first
    torch.testing.assert_close(first, block(mask, torch.float32))
    assert mask.with_prefix(2).dense(torch.float32).shape[-1] == 9  # a new mask, a new cache
