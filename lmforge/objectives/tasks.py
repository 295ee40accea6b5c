"""Fine-tuning objectives: sequence classification, token classification (NER), supervised
fine-tuning of a causal LM (loss on the response only), sequence-to-sequence; each optionally
with knowledge distillation from a teacher.

    classify   L_CE = -(1/B) sum_b w_{y_b} log softmax(z_b)[y_b] / ((1/B) sum_b w_{y_b})
               (z_b: the logits of the pooled [CLS] (encoder) or last non-pad token (decoder);
               w: class weights, all 1 by default, `balanced_weights` for w_c = N / (K n_c))
    tokens     the same per labelled token (a word's first piece; IGNORE elsewhere)
    sft        L = -(1/N) sum_{t in response} log P(x_t | x_<t)   (prompt tokens are IGNORE)
    seq2seq    L = -(1/N) sum_t log P(y_t | y_<t, x)
    qa         L = (CE(start logits over the window's tokens, s) + CE(end logits, e)) / 2
               (padding positions masked out; s = e = 0, the [CLS] "null" answer, when the
               window does not hold the answer)
    choice     L = CE(softmax over an example's option scores, y) (padded options masked out)

Knowledge distillation (Hinton et al.) mixes in a teacher's softened distribution:

    L = (1 - a) L_CE + a T^2 KL(softmax(z_t / T) || softmax(z_s / T))

averaged over the scored positions (examples, labelled tokens or target tokens); T^2 keeps the
gradient scale of the soft term independent of T.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.objectives.lm import (
    CHUNK_VOCAB,
    IGNORE,
    LossOutput,
    chunkable_heads,
    chunked_lm_loss,
    scored_cross_entropy,
    share,
)

INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
)


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """T^2 KL(softmax(z_t / T) || softmax(z_s / T)), the mean over rows (positions).

    KL(p || q) = sum_i p_i (log p_i - log q_i), computed in float32 from log-softmaxes.
    Args:
        student_logits, teacher_logits: (..., C) logits of the same positions.
        temperature: T > 0; higher T softens both distributions.
        mask: (...) bool, the positions averaged over (all when None; none gives 0).
    """
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (...,)
    if mask is None:
        return kl.mean() * temperature**2
    return (kl * mask).sum() / mask.sum().clamp(min=1) * temperature**2


def balanced_weights(label_ids: Sequence[int], num_labels: int) -> list[float]:
    """w_c = N / (K n_c) (scikit-learn's "balanced"): rare classes weigh more; a class with no
    training examples gets weight 0."""
    counts = torch.bincount(torch.as_tensor(list(label_ids)), minlength=num_labels).float()
    n, k = counts.sum(), num_labels
    return [float(n / (k * c)) if c > 0 else 0.0 for c in counts]


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch entries a model's forward takes (labels stay out)."""
    return {k: batch[k] for k in INPUT_KEYS if k in batch}


@dataclass
class TaskObjective:
    """(model, batch) -> LossOutput for one fine-tuning task (see the module docstring).

    Attributes:
        task: "classify", "tokens", "sft" or "seq2seq".
        label_names: class names (classify) or tags (tokens), by id; tags of the form B-X/I-X/O
            give entity-level scores on held-out data.
        class_weights: w_c per class for the cross-entropy (classify, tokens), or None.
        teacher: a model giving logits of the same shape (same labels or vocabulary), or None.
        alpha: weight a of the distillation term; temperature: T.
        span_fn: tags -> entity spans (`lmforge.evaluate.metrics.bio_spans`) for entity-level
            held-out scores of the tokens task; None skips them.
        chunk_vocab: sft without a teacher applies the LM head over chunks of rows from this
            vocabulary size on (as `CausalLMLoss`); 0 = never.

    Metrics: `accuracy` (classify), `token_acc` (tokens, sft, seq2seq), `ce` and `kd` with a
    teacher. On held-out data (model in eval mode) it also logs per-class and per-span rates that
    `summarize` turns into `macro_f1` (classify) and `entity_precision/recall/f1` (tokens).
    """

    task: str
    label_names: list[str] = field(default_factory=list)
    class_weights: Tensor | None = None
    teacher: nn.Module | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    span_fn: Callable[[list[str]], list] | None = None
    chunk_vocab: int = CHUNK_VOCAB

    @property
    def perplexity(self) -> bool:
        """Whether exp(held-out loss) is a perplexity: for generation tasks, not for labels."""
        return self.task in ("sft", "seq2seq")

    def __post_init__(self) -> None:
        if self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)

    def _teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            return self.teacher(**model_inputs(batch)).logits

    def __call__(self, model, batch: dict[str, Tensor]) -> LossOutput:
        if self.task in ("qa", "choice"):
            return span_or_choice_loss(self.task, model(**model_inputs(batch)).logits, batch)
        if self.task == "sft" and self.teacher is None:
            heads = chunkable_heads(model, self.chunk_vocab)
            if heads is not None:
                return self._sft_chunked(model, heads, batch)
        out = model(**model_inputs(batch))
        labels, logits = batch["labels"], out.logits
        # no boolean indexing and no counts read on the host: a training step never waits
        # for the device here (the held-out rates below may)
        weight = None
        if self.class_weights is not None:
            weight = self.class_weights.to(device=logits.device, dtype=torch.float32)
        ce, n, hits = scored_cross_entropy(logits, labels, weight)
        metrics = {"accuracy" if self.task == "classify" else "token_acc": share(hits, n)}
        loss = ce
        if self.teacher is not None:
            kd = distillation_loss(logits, self._teacher_logits(batch), self.temperature,
                                   labels != IGNORE)  # fmt: skip
            loss = (1 - self.alpha) * ce + self.alpha * kd
            metrics.update(ce=ce.detach(), kd=kd.detach())
        if not model.training and (self.task == "classify" or self.span_fn is not None):
            scored = labels != IGNORE
            pred, y = logits.argmax(-1), labels[scored]  # (..), (N,)
            if y.numel() and self.task == "classify":
                metrics.update(self._class_rates(pred[scored], y, y.numel()))
            elif y.numel() and self.task == "tokens":
                metrics.update(self._span_rates(pred, labels, y.numel()))
        return LossOutput(loss, n, metrics)

    def _sft_chunked(self, model, heads, batch: dict[str, Tensor]) -> LossOutput:
        """The sft loss and token accuracy with the LM head applied in chunks (no host sync:
        a batch without response tokens gives a zero loss)."""
        labels = batch["labels"]
        n = (labels != IGNORE).sum()
        out = model(**model_inputs(batch), lm_logits=False)
        loss, hits = chunked_lm_loss(heads, out.hidden, labels, zero_if_empty=True)
        return LossOutput(loss, n, {"token_acc": share(hits, n)})

    # ----------------------------------------------------------------- held-out scores
    def _class_rates(self, pred: Tensor, y: Tensor, n: int) -> dict[str, float]:
        """Per class c: TP_c / n, predicted_c / n, true_c / n (summed over batches by the loop's
        token-weighted mean, they become corpus-wide rates)."""
        k = len(self.label_names) or int(max(pred.max(), y.max())) + 1
        tp = torch.bincount(y[pred == y], minlength=k)
        predicted, true = torch.bincount(pred, minlength=k), torch.bincount(y, minlength=k)
        out = {}
        for c in range(k):
            out[f"_tp.{c}"] = float(tp[c]) / n
            out[f"_pred.{c}"] = float(predicted[c]) / n
            out[f"_true.{c}"] = float(true[c]) / n
        return out

    def _span_rates(self, pred: Tensor, labels: Tensor, n: int) -> dict[str, float]:
        """Entity spans (exact type, start, end) per row: true, predicted and matching, / n."""
        names, spans = self.label_names, self.span_fn
        n_true = n_pred = n_ok = 0
        for row_pred, row_labels in zip(pred.tolist(), labels.tolist(), strict=True):
            kept = [(p, t) for p, t in zip(row_pred, row_labels, strict=True) if t != IGNORE]
            true = set(spans([names[t] for _, t in kept]))
            guess = set(spans([names[p] for p, _ in kept]))
            n_true, n_pred, n_ok = n_true + len(true), n_pred + len(guess), n_ok + len(true & guess)
        return {"_ent_true": n_true / n, "_ent_pred": n_pred / n, "_ent_ok": n_ok / n}

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Corpus-level scores from the held-out means of the rates (ratios of counts, so the
        common 1/N cancels): F1_c = 2 TP_c / (predicted_c + true_c), macro-F1 = mean_c F1_c;
        entity P = matching / predicted, R = matching / true, F1 = 2 matching / (pred + true)."""
        out = {k: v for k, v in means.items() if not k.startswith("_")}
        k = sum(key.startswith("_tp.") for key in means)
        if k:
            f1 = [
                _ratio(2 * means[f"_tp.{c}"], means[f"_pred.{c}"] + means[f"_true.{c}"])
                for c in range(k)
            ]
            out["macro_f1"] = sum(f1) / k
        if "_ent_true" in means:
            ok, pred, true = means["_ent_ok"], means["_ent_pred"], means["_ent_true"]
            out["entity_precision"] = _ratio(ok, pred)
            out["entity_recall"] = _ratio(ok, true)
            out["entity_f1"] = _ratio(2 * ok, pred + true)
        return out


def choice_scores(logits: Tensor, choice_mask: Tensor) -> Tensor:
    """(B * K, 1) option scores -> (B, K), padded options at -inf."""
    z = logits.float().view(choice_mask.shape)
    return z.masked_fill(~choice_mask, float("-inf"))


def span_logits(logits: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(B, T, 2) qa logits -> start (B, T), end (B, T) in float32, padding at -inf."""
    start, end = logits.float().unbind(-1)
    if attention_mask is not None:
        pad = attention_mask == 0
        start, end = start.masked_fill(pad, float("-inf")), end.masked_fill(pad, float("-inf"))
    return start, end


def span_or_choice_loss(task: str, logits: Tensor, batch: dict[str, Tensor]) -> LossOutput:
    """The qa and choice losses of the module docstring; metrics `span_acc` (start and end both
    right) or `accuracy`."""
    labels = batch["labels"]
    if task == "qa":
        start, end = span_logits(logits, batch.get("attention_mask"))
        loss = (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2
        hits = (start.argmax(-1) == labels[:, 0]) & (end.argmax(-1) == labels[:, 1])
        return LossOutput(loss, int(labels.size(0)), {"span_acc": hits.float().mean()})
    z = choice_scores(logits, batch["choice_mask"])
    loss = F.cross_entropy(z, labels)
    hits = z.argmax(-1) == labels
    return LossOutput(loss, int(labels.size(0)), {"accuracy": hits.float().mean()})


def _ratio(a: float, b: float) -> float:
    return a / b if b > 1e-12 else 0.0
