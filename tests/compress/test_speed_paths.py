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


def test_a_strongly_pruned_int8_model_dir_loads(tmp_path):
    """The size check before loading counts each block's own (pruned) sizes: int8 blocks of a
    model pruned to a quarter of its FFN and half its heads are smaller than the unpruned
    config's lower bound."""
    from lmforge.compress.embedding import quantize_embeddings
    from lmforge.compress.quantize import quantize_model
    from lmforge.compress.structured import structured_prune
    from lmforge.models import load_model, save_model

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("bert-tiny", vocab_size=100, max_seq_len=16, dropout=0.0,
                                  attn_dropout=0.0)  # fmt: skip
    model = structured_prune(Transformer(cfg).eval(), 0.75, 0.5)
    model = quantize_model(model, "dynamic-int8")
    model.quantization["embeddings"] = quantize_embeddings(model)
    save_model(model, tmp_path)
    uniform = 2 * cfg.n_layer * cfg.d_model * (cfg.n_head * cfg.head_dim + cfg.d_ff)
    assert (tmp_path / "model.safetensors").stat().st_size < uniform  # the old bound refused it
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path).eval()(ids).logits, model(ids).logits)
