"""Knowledge graphs as (head, relation, tail) triples, and their verbalization into text.

A triple file is TSV (`head<TAB>relation<TAB>tail`, an optional header row) or JSONL
(`{"head": ..., "relation": ..., "tail": ...}` per line, optional `head_aliases` /
`tail_aliases` lists). Aliases can also come from their own JSONL file,
`{"entity": "France", "aliases": ["FR", "FRA"]}` per line.

Verbalization turns each triple into a sentence with a per-relation template:

    template("capital") = "The capital of {head} is {tail}."
    (France, capital, Paris) -> "The capital of France is Paris."

and a relation without a template falls back to "{head} {relation} {tail}." with underscores
read as spaces. The sentences are text for continued pretraining (`lmforge pretrain --init`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import DataError

DEFAULT_TEMPLATE = "{head} {relation} {tail}."


@dataclass(frozen=True)
class Triple:
    """One fact: `head` --relation--> `tail`."""

    head: str
    relation: str
    tail: str


@dataclass
class KnowledgeGraph:
    """Triples plus entity aliases, indexed by entity.

    Args:
        triples: the facts.
        aliases: entity -> other names it goes by (each entity is always its own alias).
    """

    triples: list[Triple]
    aliases: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._about: dict[str, list[Triple]] = defaultdict(list)
        for t in self.triples:
            self._about[t.head].append(t)
            if t.tail != t.head:
                self._about[t.tail].append(t)

    @property
    def entities(self) -> list[str]:
        """Every head and tail, in order of first appearance."""
        return list(self._about)

    def names(self, entity: str) -> list[str]:
        """The entity's own name followed by its aliases."""
        return [entity, *(a for a in self.aliases.get(entity, []) if a != entity)]

    def about(self, entity: str, as_head_only: bool = False) -> list[Triple]:
        """The triples that mention `entity` (only those where it is the head, if asked)."""
        found = self._about.get(entity, [])
        return [t for t in found if t.head == entity] if as_head_only else list(found)

    @classmethod
    def load(cls, triples: str | Path, aliases: str | Path | None = None) -> KnowledgeGraph:
        """Read a triple file (TSV or JSONL) and, optionally, an alias file (JSONL)."""
        rows, inline = read_triples(triples)
        names = {k: list(v) for k, v in inline.items()}
        if aliases is not None:
            for entity, more in read_aliases(aliases).items():
                names.setdefault(entity, [])
                names[entity] += [a for a in more if a not in names[entity]]
        return cls(rows, names)


def _text(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{what}' must be non-empty text, got {value!r}; fix the row.")
    return value.strip()


def read_triples(path: str | Path) -> tuple[list[Triple], dict[str, list[str]]]:
    """Triples from a TSV or JSONL file, and the aliases given inline in JSONL rows.

    Returns:
        (triples, {entity: aliases}).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no triple file at {path}; pass a .tsv or .jsonl of head, relation, tail.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; re-save it as UTF-8.") from None
    triples: list[Triple] = []
    aliases: dict[str, list[str]] = defaultdict(list)
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{where} is not valid JSON; one object per line.") from None
            if not isinstance(row, dict):
                raise DataError(f"{where} must be a JSON object with head, relation, tail.")
            h, r, t = (_text(row.get(k), k, where) for k in ("head", "relation", "tail"))
            for key, entity in (("head_aliases", h), ("tail_aliases", t)):
                extra = row.get(key, [])
                if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
                    raise DataError(f"{where}: '{key}' must be a list of strings.")
                aliases[entity] += [a for a in extra if a not in aliases[entity]]
        else:
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(
                    f"{where} has {len(cols)} tab-separated columns; a TSV triple file needs "
                    "exactly 3: head, relation, tail."
                )
            if n == 1 and [c.strip().lower() for c in cols] == ["head", "relation", "tail"]:
                continue  # header row
            h, r, t = (
                _text(c, k, where) for c, k in zip(cols, ("head", "relation", "tail"), strict=True)
            )
        triples.append(Triple(h, r, t))
    if not triples:
        raise DataError(f"{path} holds no triples; add rows of head, relation, tail.")
    return triples, dict(aliases)


def read_aliases(path: str | Path) -> dict[str, list[str]]:
    """{entity: aliases} from JSONL rows `{"entity": ..., "aliases": [...]}`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no alias file at {path}; pass a .jsonl of entity and aliases.")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{n} is not valid JSON; one object per line.") from None
        names = row.get("aliases") if isinstance(row, dict) else None
        if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
            raise DataError(f"{path}:{n} needs 'entity' (text) and 'aliases' (a list of text).")
        entity = _text(row.get("entity"), "entity", f"{path}:{n}")
        out.setdefault(entity, [])
        out[entity] += [a.strip() for a in names if a.strip() and a.strip() not in out[entity]]
    return out


def read_templates(path: str | Path) -> dict[str, str]:
    """{relation: template} from a JSON object; each template has {head} and {tail}."""
    path = Path(path)
    try:
        templates = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read templates from {path} ({e}); pass a JSON object.") from None
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise DataError(f"{path} must be a JSON object of relation -> template text.")
    for relation, template in templates.items():
        check_template(template, relation)
    return templates


def check_template(template: str, relation: str) -> None:
    """A template must name {head} and {tail} and nothing else in braces."""
    try:
        template.format(head="", tail="", relation="")
    except (KeyError, IndexError, ValueError):
        raise DataError(
            f"the template of '{relation}' ({template!r}) may only use {{head}}, {{tail}} and "
            "{relation}; write literal braces as {{ and }}."
        ) from None
    if "{head}" not in template or "{tail}" not in template:
        raise DataError(f"the template of '{relation}' ({template!r}) needs {{head}} and {{tail}}.")


def verbalize(triple: Triple, templates: Mapping[str, str] | None = None) -> str:
    """The sentence for one triple: its relation's template, else "{head} {relation} {tail}."."""
    template = (templates or {}).get(triple.relation, DEFAULT_TEMPLATE)
    return template.format(
        head=triple.head, tail=triple.tail, relation=triple.relation.replace("_", " ")
    )


def verbalize_all(
    triples: Iterable[Triple], templates: Mapping[str, str] | None = None, by_entity: bool = True
) -> list[str]:
    """Documents of sentences: one per head entity (its facts together), or one per triple."""
    if not by_entity:
        return [verbalize(t, templates) for t in triples]
    docs: dict[str, list[str]] = defaultdict(list)
    for t in triples:
        docs[t.head].append(verbalize(t, templates))
    return [" ".join(sentences) for sentences in docs.values()]
