"""Metrics against values worked out by hand (and against scikit-learn where it is installed)."""

from __future__ import annotations

import pytest

from lmforge.evaluate.metrics import (
    accuracy,
    bio_spans,
    classification_report,
    confusion_matrix,
    entity_f1,
    entity_scores,
    macro_f1,
    per_class,
)

# a: TP 2 FP 0 FN 1 -> P 1, R 2/3, F1 0.8
# b: TP 1 FP 1 FN 1 -> P 1/2, R 1/2, F1 1/2
# c: TP 1 FP 1 FN 0 -> P 1/2, R 1, F1 2/3
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_accuracy_and_per_class_by_hand():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    scores = per_class(Y_TRUE, Y_PRED)
    assert scores["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert scores["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert scores["c"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_confusion_matrix_rows_true_columns_predicted():
    assert confusion_matrix(Y_TRUE, Y_PRED) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # an explicit order, and a class that never occurs gets an empty row and column
    assert confusion_matrix(Y_TRUE, Y_PRED, ["c", "b", "a", "d"]) == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 2, 0],
        [0, 0, 0, 0],
    ]


def test_classification_report_holds_everything():
    r = classification_report(Y_TRUE, Y_PRED)
    assert r["n"] == 6 and r["labels"] == ["a", "b", "c"]
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert r["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert r["per_class"]["b"]["support"] == 2
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_a_class_never_predicted_scores_zero_not_nan():
    r = classification_report([0, 1, 1], [1, 1, 1], labels=[0, 1])
    assert r["per_class"]["0"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # class 1: P = 2/3, R = 1, F1 = 0.8; macro = 0.4
    assert r["macro_f1"] == pytest.approx(0.4)


def test_integer_labels_and_mistakes():
    assert accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one prediction per example"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="no examples"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="repeat"):
        per_class([1], [1], labels=[1, 1])


def test_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    import random

    rng = random.Random(0)
    labels = ["x", "y", "z", "w"]
    y_true = [rng.choice(labels) for _ in range(200)]
    y_pred = [t if rng.random() < 0.6 else rng.choice(labels) for t in y_true]
    order = sorted(labels)
    assert macro_f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
    assert (
        confusion_matrix(y_true, y_pred)
        == sk.confusion_matrix(y_true, y_pred, labels=order).tolist()
    )
    r = classification_report(y_true, y_pred)
    assert r["weighted_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average="weighted"))
    p, rec, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=order)
    for i, c in enumerate(order):
        assert r["per_class"][c]["precision"] == pytest.approx(p[i])
        assert r["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert r["per_class"][c]["support"] == s[i]


def test_bio_spans():
    assert bio_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    # an I- without its B- starts an entity; a B- right after an entity starts a new one
    assert bio_spans(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == [
        ("PER", 0, 2),
        ("PER", 2, 3),
        ("LOC", 4, 5),
    ]
    # a type change inside I- tags splits the span
    assert bio_spans(["B-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]
    assert bio_spans(["O", "O"]) == []


def test_entity_f1_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-LOC", "O"]]
    # true spans 3, predicted 3, exactly matching 1 (PER 0-2): P = R = F1 = 1/3
    s = entity_scores(true, pred)
    assert (s["n_true"], s["n_pred"], s["n_correct"]) == (3, 3, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert entity_f1(true, pred) == pytest.approx(1 / 3)
    assert s["per_type"]["PER"] == pytest.approx(
        {"precision": 1, "recall": 1, "f1": 1, "support": 1}
    )
    assert s["per_type"]["LOC"]["f1"] == 0.0 and s["per_type"]["LOC"]["support"] == 2
    assert s["per_type"]["ORG"]["support"] == 0
    # a single sequence is accepted as is; a token-level hit on a partial span is no hit
    assert entity_f1(["B-A", "I-A"], ["B-A", "O"]) == 0.0
    assert entity_f1(["B-A", "I-A"], ["B-A", "I-A"]) == 1.0
    with pytest.raises(ValueError, match="one tag per token"):
        entity_f1([["O", "O"]], [["O"]])
