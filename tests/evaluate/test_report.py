"""Markdown reports and the confusion-matrix PNG."""

from __future__ import annotations

from lmforge.evaluate.metrics import classification_report, entity_scores
from lmforge.evaluate.report import classification_markdown, entity_markdown, write_report


def test_classification_report_files(tmp_path):
    report = classification_report(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    report["loss"] = 0.5
    paths = write_report(report, "classify", tmp_path, "test", "toy")
    assert [p.name for p in paths] == ["test-report.md", "test-confusion.png"]
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    text = paths[0].read_text(encoding="utf-8")
    assert "| accuracy | 0.7500 |" in text and "| loss | 0.5000 |" in text
    assert "| b | 0.5000 | 1.0000 | 0.6667 | 1 |" in text  # P = 1/2, R = 1, F1 = 2/3
    assert "| a | 1 | 1 | 0 |" in text  # the confusion row of class a
    assert "test-confusion.png" in classification_markdown(report, "t", "test-confusion.png")


def test_entity_report(tmp_path):
    scores = entity_scores(["B-PER", "I-PER", "O"], ["B-PER", "I-PER", "B-LOC"])
    flat = {
        "entity_precision": scores["precision"],
        "entity_recall": scores["recall"],
        "entity_f1": scores["f1"],
        **scores,
    }
    text = entity_markdown(flat, "ner")
    assert "| entity_f1 | 0.6667 |" in text and "| LOC | 0.0000 | 0.0000 | 0.0000 | 0 |" in text
    [md] = write_report(flat, "tokens", tmp_path, "valid", "ner")
    assert md.name == "valid-report.md"
