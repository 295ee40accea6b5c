"""Task objectives against their formulas: distillation, class weights, corpus-level F1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.evaluate.metrics import bio_spans, entity_f1, macro_f1
from lmforge.models import Transformer
from lmforge.objectives import IGNORE, TaskObjective, balanced_weights, distillation_loss
from lmforge.train import evaluate_loss


def test_distillation_term_equals_the_formula():
    torch.manual_seed(0)
    zs, zt, t = torch.randn(5, 4), torch.randn(5, 4), 3.0
    expected = 0.0
    for s_row, t_row in zip(zs.tolist(), zt.tolist(), strict=True):
        ps = [math.exp(v / t) for v in s_row]
        pt = [math.exp(v / t) for v in t_row]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        expected += sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    expected = t * t * expected / 5
    assert float(distillation_loss(zs, zt, t)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(zt, zt, t)) == pytest.approx(0.0, abs=1e-6)


class Fixed(torch.nn.Module):
    """A 'model' returning given logits (to test an objective's arithmetic alone)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, **kw):
        return type("Out", (), {"logits": self.logits + self.w})()


def test_classification_with_teacher_mixes_ce_and_kd():
    torch.manual_seed(1)
    zs, zt = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = {"input_ids": torch.zeros(6, 2, dtype=torch.long), "labels": y}
    a, t = 0.3, 2.0
    out = TaskObjective("classify", ["a", "b", "c"], teacher=Fixed(zt), alpha=a, temperature=t)(
        Fixed(zs), batch
    )
    kd = t * t * F.kl_div(F.log_softmax(zs / t, -1), F.log_softmax(zt / t, -1),
                          reduction="batchmean", log_target=True)  # fmt: skip
    expected = (1 - a) * F.cross_entropy(zs, y) + a * kd
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert out.metrics["kd"] == pytest.approx(float(kd), rel=1e-5) and out.n_tokens == 6


def test_class_weights_and_balanced():
    assert balanced_weights([0, 0, 0, 1], 3) == pytest.approx([4 / 9, 4 / 3, 0.0])
    z = torch.randn(4, 2)
    y = torch.tensor([0, 0, 0, 1])
    w = torch.tensor([1.0, 3.0])
    batch = {"input_ids": torch.zeros(4, 1, dtype=torch.long), "labels": y}
    out = TaskObjective("classify", ["a", "b"], class_weights=w)(Fixed(z), batch)
    nll = -F.log_softmax(z, -1)[torch.arange(4), y]
    assert float(out.loss.detach()) == pytest.approx(
        float((w[y] * nll).sum() / w[y].sum()), rel=1e-5
    )


def test_token_objective_scores_labelled_positions_only():
    z = torch.randn(2, 3, 4)
    labels = torch.tensor([[IGNORE, 1, 2], [3, IGNORE, IGNORE]])
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": labels}
    out = TaskObjective("tokens", ["O", "B-X", "I-X", "B-Y"])(Fixed(z), batch)
    keep = labels != IGNORE
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(z[keep], labels[keep])))
    assert out.n_tokens == 3


@pytest.mark.parametrize("task", ["classify", "tokens"])
def test_held_out_f1_matches_the_metrics_on_all_predictions(task):
    """The loop averages per-batch rates; `summarize` must give the corpus-level F1 exactly."""
    torch.manual_seed(2)
    names = ["O", "B-X", "I-X", "B-Y"]
    cfg = ModelConfig.from_preset("bert-tiny", vocab_size=50, heads=(task,), num_labels=4,
                                  dropout=0.0, attn_dropout=0.0)  # fmt: skip
    model = Transformer(cfg).eval()
    batches = []
    for size in (5, 3, 7):  # uneven batches
        ids = torch.randint(5, 50, (size, 6))
        labels = torch.randint(0, 4, (size,) if task == "classify" else (size, 6))
        if task == "tokens":
            labels[:, 0] = IGNORE
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    objective = TaskObjective(task, names, span_fn=bio_spans)
    ev = evaluate_loss(model, objective, batches, torch.device("cpu"))
    assert not any(k.startswith("eval__") for k in ev)  # the raw rates are summarised away
    with torch.no_grad():
        preds = [model(b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
                 for b in batches]  # fmt: skip
    if task == "classify":
        y = [int(v) for b in batches for v in b["labels"]]
        p = [int(v) for pr in preds for v in pr]
        assert ev["eval_macro_f1"] == pytest.approx(macro_f1(y, p, labels=range(4)))
        assert ev["eval_accuracy"] == pytest.approx(
            sum(a == b for a, b in zip(y, p, strict=True)) / len(y)
        )
    else:
        true, guess = [], []
        for b, pr in zip(batches, preds, strict=True):
            for row_y, row_p in zip(b["labels"].tolist(), pr.tolist(), strict=True):
                kept = [
                    (names[t], names[q]) for t, q in zip(row_y, row_p, strict=True) if t != IGNORE
                ]
                true.append([t for t, _ in kept])
                guess.append([q for _, q in kept])
        assert ev["eval_entity_f1"] == pytest.approx(entity_f1(true, guess))
