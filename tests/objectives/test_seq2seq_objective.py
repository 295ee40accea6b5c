"""seq2seq_loss against the plain formula, and padding that changes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.seq2seq import collate
from lmforge.models import Transformer
from lmforge.objectives import IGNORE, seq2seq_loss

EOS, PAD = 1, 0
EXAMPLES = [(np.array([5, 6, 7, 8]), np.array([9, 10, 11])), (np.array([12, 13]), np.array([14]))]


@pytest.fixture(params=["t5-tiny", "transformer-tiny"])
def model(request) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(request.param, vocab_size=40, dropout=0.0, eos_id=EOS, pad_id=PAD)
    return Transformer(cfg).eval()


def test_seq2seq_loss_is_the_plain_formula(model):
    batch = collate(EXAMPLES, EOS, PAD, decoder_start_id=PAD)
    out = seq2seq_loss(model, batch)
    with torch.no_grad():
        ref = model(
            batch["input_ids"],
            batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
        )
    logp = ref.logits.log_softmax(-1)
    labels = batch["labels"]
    picks = [(b, t) for b in range(2) for t in range(labels.size(1)) if labels[b, t] != IGNORE]
    expected = -sum(logp[b, t, labels[b, t]] for b, t in picks) / len(picks)
    torch.testing.assert_close(out.loss, expected)
    assert out.n_tokens == len(picks) == 3 + 1 + 1 + 1
    hits = sum(int(ref.logits[b, t].argmax() == labels[b, t]) for b, t in picks)
    assert out.metrics["token_acc"] == pytest.approx(hits / len(picks))


def test_padding_does_not_change_the_loss(model):
    """The batch loss is the token-weighted mean of the examples' losses taken alone."""
    batch = seq2seq_loss(model, collate(EXAMPLES, EOS, PAD, PAD))
    alone = [seq2seq_loss(model, collate([ex], EOS, PAD, PAD)) for ex in EXAMPLES]
    n = sum(a.n_tokens for a in alone)
    weighted = sum(float(a.loss.detach()) * a.n_tokens for a in alone) / n
    assert math.isclose(float(batch.loss.detach()), weighted, rel_tol=1e-5)
