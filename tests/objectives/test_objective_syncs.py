"""Training objectives never read a tensor's value on the host: each traces as one graph
(torch.compile with fullgraph=True and the eager backend fails on `.item()`, `int(t)`,
`bool(t)` and on boolean indexing, whose output size only the device knows), and a batch
without a single scored position gives a zero loss that still has a graph, decided on the
device. Held-out rates (model in eval mode) may read the host; they are not checked here."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from lmforge.objectives import IGNORE, TaskObjective, mlm_nsp_loss, seq2seq_loss
from lmforge.objectives.lm import scored_cross_entropy, share
from lmforge.objectives.multimodal import FusionObjective


@dataclass
class _Out:
    logits: torch.Tensor
    nsp_logits: torch.Tensor | None = None


class Fixed(torch.nn.Module):
    """A 'model' returning given logits (and NSP logits), trainable through one scalar."""

    def __init__(self, logits, nsp_logits=None):
        super().__init__()
        self.logits, self.nsp_logits = logits, nsp_logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, **kw):
        nsp = None if self.nsp_logits is None else self.nsp_logits + self.w
        return _Out(self.logits + self.w, nsp)


def _labels(shape, classes, ignored=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, shape, generator=g)
    return y.masked_fill(torch.rand(shape, generator=g) < ignored, IGNORE)


def _cases():
    torch.manual_seed(0)
    ids = torch.zeros(2, 6, dtype=torch.long)
    seq = {"input_ids": ids, "labels": _labels((2, 6), 11)}
    mlm = {**seq, "nsp_labels": torch.tensor([0, 1])}
    s2s = {**seq, "decoder_input_ids": ids}
    cls = {"input_ids": ids, "labels": torch.tensor([2, 0])}
    teacher = Fixed(torch.randn(2, 6, 11))
    return {
        "mlm-nsp": (mlm_nsp_loss, Fixed(torch.randn(2, 6, 11), torch.randn(2, 2)), mlm),
        "seq2seq": (seq2seq_loss, Fixed(torch.randn(2, 6, 11)), s2s),
        "classify": (TaskObjective("classify", ["a", "b", "c"]), Fixed(torch.randn(2, 3)), cls),
        "classify-weighted": (
            TaskObjective("classify", ["a", "b", "c"], class_weights=torch.tensor([1.0, 2, 3])),
            Fixed(torch.randn(2, 3)),
            cls,
        ),
        "tokens": (
            TaskObjective("tokens", [str(i) for i in range(11)]),
            Fixed(torch.randn(2, 6, 11)),
            seq,
        ),  # fmt: skip
        "sft-teacher": (TaskObjective("sft", teacher=teacher), Fixed(torch.randn(2, 6, 11)), seq),
        "caption": (
            FusionObjective("caption"),
            Fixed(torch.randn(2, 6, 11)),
            {**seq, "attention_mask": ids, "pixel_values": torch.zeros(2, 1)},
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_objective_traces_without_host_reads(name):
    objective, model, batch = _cases()[name]
    model.train()
    eager = objective(model, batch)
    traced = torch.compile(lambda b: objective(model, b), fullgraph=True, backend="eager")(batch)
    torch.testing.assert_close(traced.loss, eager.loss)
    assert torch.is_tensor(eager.n_tokens) or isinstance(eager.n_tokens, int)
    for k, v in eager.metrics.items():
        torch.testing.assert_close(torch.as_tensor(traced.metrics[k]), torch.as_tensor(v))


def test_scored_cross_entropy_is_f_cross_entropy_and_zero_when_nothing_is_scored():
    torch.manual_seed(0)
    z, y, w = torch.randn(4, 5, 7), _labels((4, 5), 7), torch.rand(7) + 0.1
    for weight in (None, w):
        loss, n, hits = scored_cross_entropy(z, y, weight)
        want = F.cross_entropy(z.reshape(-1, 7), y.reshape(-1), weight=weight, ignore_index=IGNORE)
        torch.testing.assert_close(loss, want)
    scored = y != IGNORE
    assert int(n) == int(scored.sum())
    assert int(hits) == int(((z.argmax(-1) == y) & scored).sum())
    z = torch.randn(2, 3, requires_grad=True)
    loss, n, hits = scored_cross_entropy(z, torch.full((2,), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(n) == 0 and float(share(hits, n)) == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_mlm_batch_without_selected_tokens_is_a_zero_loss():
    model = Fixed(torch.randn(2, 6, 11))
    batch = {"input_ids": torch.zeros(2, 6, dtype=torch.long),
             "labels": torch.full((2, 6), IGNORE)}  # fmt: skip
    out = mlm_nsp_loss(model, batch)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and int(out.n_tokens) == 0
    assert float(out.metrics["mlm_acc"]) == 0.0 and float(model.w.grad) == 0.0


def test_chunked_sft_traces_and_gives_zero_without_response_tokens():
    """sft with the LM head in chunks (a real tiny model): one graph, and a batch whose labels
    are all IGNORE (a prompt that filled the window) is a zero loss with zero gradients."""
    from lmforge.config import ModelConfig
    from lmforge.models import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64)).train()
    objective = TaskObjective("sft", chunk_vocab=1)
    ids = torch.randint(0, 64, (2, 8))
    batch = {"input_ids": ids, "labels": _labels((2, 8), 64)}
    eager = objective(model, batch)
    traced = torch.compile(lambda b: objective(model, b), fullgraph=True, backend="eager")(batch)
    torch.testing.assert_close(traced.loss, eager.loss)
    empty = objective(model, {"input_ids": ids, "labels": torch.full((2, 8), IGNORE)})
    empty.loss.backward()
    assert float(empty.loss.detach()) == 0.0 and int(empty.n_tokens) == 0
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.parameters() if p.grad is not None)
