"""Triple files, aliases, templates and verbalization; bad input gets one clear sentence."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import DataError
from lmforge.knowledge import KnowledgeGraph, Triple, read_templates, verbalize, verbalize_all


def test_tsv_with_header_and_jsonl_with_inline_aliases(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("head\trelation\ttail\nFrance\tcapital\tParis\nFrance\tcurrency\tEuro\n")
    g = KnowledgeGraph.load(tsv)
    assert g.triples == [Triple("France", "capital", "Paris"), Triple("France", "currency", "Euro")]
    assert g.entities == ["France", "Paris", "Euro"]
    assert g.about("Paris") == [Triple("France", "capital", "Paris")]
    assert g.about("Paris", as_head_only=True) == []

    jsonl = tmp_path / "t.jsonl"
    row = {"head": "Japan", "relation": "capital", "tail": "Tokyo", "head_aliases": ["JP"]}
    jsonl.write_text(json.dumps(row) + "\n\n")
    aliases = tmp_path / "a.jsonl"
    aliases.write_text(json.dumps({"entity": "Japan", "aliases": ["JPN", "JP"]}) + "\n")
    g = KnowledgeGraph.load(jsonl, aliases)
    assert g.names("Japan") == ["Japan", "JP", "JPN"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.tsv", "France\tcapital\n", "has 2 tab-separated columns"),
        ("a.tsv", "France\t \tParis\n", "'relation' must be non-empty"),
        ("a.jsonl", '{"head": "France"}\n', "'relation' must be non-empty"),
        ("a.jsonl", "not json\n", "is not valid JSON"),
        ("a.tsv", "head\trelation\ttail\n", "holds no triples"),
    ],
)
def test_bad_triple_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        KnowledgeGraph.load(path)
    with pytest.raises(DataError, match="no triple file"):
        KnowledgeGraph.load(tmp_path / "missing.tsv")


def test_verbalize_templates_and_fallback(tmp_path):
    t = Triple("France", "capital", "Paris")
    assert verbalize(t, {"capital": "The capital of {head} is {tail}."}) == (
        "The capital of France is Paris."
    )
    assert verbalize(Triple("Paris", "twin_city", "Rome")) == "Paris twin city Rome."
    docs = verbalize_all(
        [t, Triple("France", "currency", "Euro"), Triple("Peru", "capital", "Lima")]
    )
    assert docs == ["France capital Paris. France currency Euro.", "Peru capital Lima."]
    assert len(verbalize_all([t, t], by_entity=False)) == 2

    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"capital": "{head} is {country}"}))
    with pytest.raises(DataError, match="may only use"):
        read_templates(bad)
    bad.write_text(json.dumps({"capital": "{head} only"}))
    with pytest.raises(DataError, match=r"needs \{head\} and \{tail\}"):
        read_templates(bad)
