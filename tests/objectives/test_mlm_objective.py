"""mlm_nsp_loss against the plain formula: L = mean CE over selected tokens + mean NSP CE."""

from __future__ import annotations

import math

import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer
from lmforge.objectives import IGNORE, mlm_nsp_loss


def _model(heads=("mlm", "nsp")) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "bert-tiny", vocab_size=50, heads=heads, dropout=0.0, attn_dropout=0.0
    )
    return Transformer(cfg).eval()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 10), generator=g)
    labels = torch.full_like(ids, IGNORE)
    labels[0, 2], labels[1, 5], labels[2, 7], labels[2, 8] = 11, 12, 13, 14
    mask = torch.ones_like(ids)
    mask[2, 9] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": (torch.arange(10) >= 5).long().expand(3, 10),
        "labels": labels,
        "nsp_labels": torch.tensor([0, 1, 1]),
    }


def test_mlm_nsp_loss_is_the_plain_formula():
    model, batch = _model(), _batch()
    out = mlm_nsp_loss(model, batch)
    with torch.no_grad():
        ref = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    logp = ref.logits.log_softmax(-1)
    picks = [(0, 2, 11), (1, 5, 12), (2, 7, 13), (2, 8, 14)]
    mlm = -sum(logp[b, t, y] for b, t, y in picks) / len(picks)
    nsp_logp = ref.nsp_logits.log_softmax(-1)
    nsp = -sum(nsp_logp[b, y] for b, y in enumerate([0, 1, 1])) / 3
    torch.testing.assert_close(out.loss, mlm + nsp)
    assert out.n_tokens == 4
    assert math.isclose(out.metrics["mlm_loss"], float(mlm), rel_tol=1e-5)
    assert math.isclose(out.metrics["nsp_loss"], float(nsp), rel_tol=1e-5)
    hits = sum(int(ref.logits[b, t].argmax() == y) for b, t, y in picks)
    assert out.metrics["mlm_acc"] == hits / 4
    nsp_hits = (ref.nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean()
    assert out.metrics["nsp_acc"] == float(nsp_hits)


def test_without_an_nsp_head_it_is_mlm_only():
    model, batch = _model(heads=("mlm",)), _batch()
    out = mlm_nsp_loss(model, batch)
    assert set(out.metrics) == {"mlm_loss", "mlm_acc"}
    assert math.isclose(float(out.loss.detach()), out.metrics["mlm_loss"], rel_tol=1e-6)


def test_no_selected_token_gives_a_finite_zero_with_a_graph():
    model, batch = _model(), _batch()
    batch["labels"] = torch.full_like(batch["labels"], IGNORE)
    out = mlm_nsp_loss(model.train(), batch)
    assert out.n_tokens == 0 and math.isfinite(float(out.loss.detach()))
    out.loss.backward()  # the NSP part still trains
    assert model.heads.nsp.weight.grad is not None
