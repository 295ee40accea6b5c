"""Classification and tagging metrics on plain label lists (no tensors, no model).

For classes c over N examples with true labels y_i and predictions p_i:

    accuracy     = (1/N) sum_i 1[p_i = y_i]
    TP_c = #{i: y_i = c, p_i = c}   FP_c = #{i: y_i != c, p_i = c}   FN_c = #{i: y_i = c, p_i != c}
    precision_c  = TP_c / (TP_c + FP_c)          (0 when the class is never predicted)
    recall_c     = TP_c / (TP_c + FN_c)          (0 when the class never occurs)
    F1_c         = 2 P_c R_c / (P_c + R_c)       (0 when P_c + R_c = 0)
    macro-F1     = (1/K) sum_c F1_c              (every class counts the same)
    weighted-F1  = sum_c support_c F1_c / N      (support_c = #{i: y_i = c})
    confusion[a][b] = #{i: y_i = labels[a], p_i = labels[b]}   (rows true, columns predicted)

Entity F1 (NER, BIO tags) scores spans, not tokens: a predicted entity counts only when its type,
start and end all equal a true entity's (CoNLL's exact match).

    P = |pred ∩ true| / |pred|,   R = |pred ∩ true| / |true|,   F1 = 2PR / (P + R)

Labels may be strings or integers. Mistakes (lists of different lengths, no examples) raise a
`ValueError` with one sentence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

Label = Hashable


def _check(y_true: Sequence[Label], y_pred: Sequence[Label]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}; pass one prediction "
            "per example."
        )
    if len(y_true) == 0:
        raise ValueError("there are no examples to score; pass at least one label.")


def sorted_labels(*label_lists: Sequence[Label]) -> list[Label]:
    """Every label that occurs in any list, sorted (by their text when types are mixed)."""
    found = {label for labels in label_lists for label in labels}
    try:
        return sorted(found)  # type: ignore[type-var]
    except TypeError:
        return sorted(found, key=str)


def _labels(y_true, y_pred, labels: Sequence[Label] | None) -> list[Label]:
    if labels is None:
        return sorted_labels(y_true, y_pred)
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels {labels} repeat a label; list each class once.")
    if not labels:
        raise ValueError("labels is empty; list the classes to score or pass None.")
    return labels


def accuracy(y_true: Sequence[Label], y_pred: Sequence[Label]) -> float:
    """accuracy = (1/N) sum_i 1[p_i = y_i]."""
    _check(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def per_class(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> dict[Label, dict[str, float]]:
    """Precision, recall, F1 and support of each class (see the module docstring).

    Args:
        y_true, y_pred: one label per example.
        labels: the classes to report, in order (default: every label seen, sorted).

    Returns:
        {class: {"precision", "recall", "f1", "support"}}.
    """
    _check(y_true, y_pred)
    classes = _labels(y_true, y_pred, labels)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for t, p in zip(y_true, y_pred, strict=True):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    out: dict[Label, dict[str, float]] = {}
    for c in classes:
        precision = _safe_div(tp[c], tp[c] + fp[c])
        recall = _safe_div(tp[c], tp[c] + fn[c])
        f1 = _safe_div(2 * precision * recall, precision + recall)
        out[c] = {"precision": precision, "recall": recall, "f1": f1, "support": tp[c] + fn[c]}
    return out


def macro_f1(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> float:
    """macro-F1 = (1/K) sum_c F1_c over the K classes (`labels`, default every label seen)."""
    scores = per_class(y_true, y_pred, labels)
    return sum(s["f1"] for s in scores.values()) / len(scores)


def confusion_matrix(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> list[list[int]]:
    """confusion[a][b] = #{i: y_i = labels[a], p_i = labels[b]} (rows true, columns predicted).

    Pairs whose true or predicted label is not in `labels` have no cell and are left out.
    """
    _check(y_true, y_pred)
    classes = _labels(y_true, y_pred, labels)
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


def classification_report(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> dict[str, Any]:
    """Everything about a classifier's predictions in one JSON-ready dict.

    Returns:
        {"n", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1",
        "labels" (the classes, in order), "per_class" {str(class): {"precision", "recall",
        "f1", "support"}}, "confusion_matrix" (rows true, columns predicted, in `labels` order)}.
        Macro numbers average over the listed classes; weighted-F1 weights F1_c by support_c / N.
    """
    scores = per_class(y_true, y_pred, labels)
    classes = list(scores)
    k, n = len(classes), len(y_true)
    return {
        "n": n,
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": sum(s["precision"] for s in scores.values()) / k,
        "macro_recall": sum(s["recall"] for s in scores.values()) / k,
        "macro_f1": sum(s["f1"] for s in scores.values()) / k,
        "weighted_f1": sum(s["f1"] * s["support"] for s in scores.values()) / n,
        "labels": classes,
        "per_class": {str(c): s for c, s in scores.items()},
        "confusion_matrix": confusion_matrix(y_true, y_pred, classes),
    }


# --------------------------------------------------------------------------- entities (BIO)
Span = tuple[str, int, int]  # (type, start, end) with end exclusive


def bio_spans(tags: Sequence[str]) -> list[Span]:
    """Entity spans of one BIO-tagged sequence: (type, start, end), end exclusive.

    `B-X` starts an entity of type X; `I-X` continues it when the previous tag was `B-X` or
    `I-X`, and otherwise starts a new one (as CoNLL's conlleval reads IOB1/loose BIO); `O` (or
    any tag without a `B-`/`I-` prefix) is outside every entity.

    >>> bio_spans(["B-PER", "I-PER", "O", "B-LOC"])
    [('PER', 0, 2), ('LOC', 3, 4)]
    """
    spans: list[Span] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, name = tag.partition("-") if tag[:2] in ("B-", "I-") else ("O", "", "")
        continues = prefix == "I" and kind == name
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not continues):
            kind, start = name, i
    return spans


def _sequences(tags: Sequence[Sequence[str]] | Sequence[str]) -> list[list[str]]:
    if tags and isinstance(tags[0], str):
        return [list(tags)]  # one sequence
    return [list(seq) for seq in tags]


def entity_scores(
    true_tags: Sequence[Sequence[str]] | Sequence[str],
    pred_tags: Sequence[Sequence[str]] | Sequence[str],
) -> dict[str, Any]:
    """Span-level precision, recall and F1 of BIO tags, overall and per entity type.

    Args:
        true_tags, pred_tags: a list of tag sequences (or one sequence), aligned token by token.

    Returns:
        {"precision", "recall", "f1", "n_true", "n_pred", "n_correct",
        "per_type" {type: {"precision", "recall", "f1", "support"}}}; with no entities on
        either side every score is 0.
    """
    true_seqs, pred_seqs = _sequences(true_tags), _sequences(pred_tags)
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(
            f"true_tags has {len(true_seqs)} sequences but pred_tags has {len(pred_seqs)}; pass "
            "one predicted sequence per example."
        )
    if not true_seqs:
        raise ValueError("there are no sequences to score; pass at least one.")
    true_set: set[tuple[int, Span]] = set()
    pred_set: set[tuple[int, Span]] = set()
    for n, (t, p) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(t) != len(p):
            raise ValueError(
                f"sequence {n} has {len(t)} true tags but {len(p)} predicted tags; predict one "
                "tag per token."
            )
        true_set |= {(n, s) for s in bio_spans(t)}
        pred_set |= {(n, s) for s in bio_spans(p)}
    correct = true_set & pred_set
    types = sorted({s[1][0] for s in true_set | pred_set})
    per_type = {}
    for kind in types:
        n_t = sum(s[1][0] == kind for s in true_set)
        n_p = sum(s[1][0] == kind for s in pred_set)
        n_c = sum(s[1][0] == kind for s in correct)
        per_type[kind] = _prf(n_c, n_p, n_t) | {"support": n_t}
    return {
        **_prf(len(correct), len(pred_set), len(true_set)),
        "n_true": len(true_set),
        "n_pred": len(pred_set),
        "n_correct": len(correct),
        "per_type": per_type,
    }


def _prf(correct: int, predicted: int, true: int) -> dict[str, float]:
    precision, recall = _safe_div(correct, predicted), _safe_div(correct, true)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _safe_div(2 * precision * recall, precision + recall),
    }


def entity_f1(
    true_tags: Sequence[Sequence[str]] | Sequence[str],
    pred_tags: Sequence[Sequence[str]] | Sequence[str],
) -> float:
    """Span F1 of BIO tags: F1 = 2PR / (P + R), P = correct / predicted, R = correct / true
    entities, a span correct only when type, start and end all match (see `entity_scores`)."""
    return entity_scores(true_tags, pred_tags)["f1"]
