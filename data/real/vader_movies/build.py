"""Rebuild train/valid/test JSONL of the VADER movie-review snippets from the PyPI sdist.

Source: the sdist of `vaderSentiment==3.3.2` ships `additional_resources/hutto_ICWSM_2014.tar.gz`,
which holds `movieReviewSnippets_GroundTruth.txt` (ID <TAB> mean rating <TAB> sentence): 10,605
movie-review sentences, each rated by at least 20 people on -4 (extremely negative) .. +4
(extremely positive). See PROVENANCE.md beside this file.

Label rule (a mean rating r of the raters):

    r >= +0.5  -> "positive"
    r <= -0.5  -> "negative"
    |r| < 0.5  -> dropped (the raters were close to neutral)

Texts that occur more than once are kept once (the first occurrence), and dropped entirely when
their copies disagree on the label, so no sentence can sit in two splits. The split is stratified
by label: each label's examples are shuffled with `random.Random(SEED)` and cut 70/10/20 into
train/valid/test; each split is then shuffled with the same generator so labels interleave.

Usage:
    python data/real/vader_movies/build.py                      # pip-downloads the sdist
    python data/real/vader_movies/build.py --sdist vaderSentiment-3.3.2.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

PACKAGE = "vaderSentiment==3.3.2"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MEMBER_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
THRESHOLD = 0.5
SEED = 0
FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}
HERE = Path(__file__).resolve().parent


def download_sdist(dest: Path) -> Path:
    """`pip download` the sdist (the wheel does not carry the data) into `dest`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        + [PACKAGE, "-d", str(dest)],
        check=True,
    )
    return next(dest.glob("vaderSentiment-3.3.2.tar.gz"))


def read_ground_truth(sdist: Path) -> bytes:
    """The bytes of movieReviewSnippets_GroundTruth.txt, checked against its SHA-256."""
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER_ARCHIVE).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        data = inner.extractfile(MEMBER).read()  # type: ignore[union-attr]
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER} has SHA-256 {digest}, expected {MEMBER_SHA256}.")
    return data


def label_of(rating: float) -> str | None:
    if rating >= THRESHOLD:
        return "positive"
    if rating <= -THRESHOLD:
        return "negative"
    return None


def examples(data: bytes) -> list[dict]:
    """Labelled, de-duplicated examples in file order."""
    rows: dict[str, dict] = {}
    conflicting: set[str] = set()
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        ident, rating, text = line.split("\t")
        text = " ".join(text.split())
        label = label_of(float(rating))
        if label is None or not text:
            continue
        if text in rows:
            if rows[text]["label"] != label:
                conflicting.add(text)
            continue
        rows[text] = {"id": int(ident), "text": text, "label": label, "rating": float(rating)}
    return [r for t, r in rows.items() if t not in conflicting]


def split(rows: list[dict]) -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    out: dict[str, list[dict]] = {name: [] for name in FRACTIONS}
    for label in sorted({r["label"] for r in rows}):
        group = [r for r in rows if r["label"] == label]
        rng.shuffle(group)
        n_train = round(FRACTIONS["train"] * len(group))
        n_valid = round(FRACTIONS["valid"] * len(group))
        out["train"] += group[:n_train]
        out["valid"] += group[n_train : n_train + n_valid]
        out["test"] += group[n_train + n_valid :]
    for part in out.values():
        rng.shuffle(part)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="vaderSentiment-3.3.2.tar.gz (else download)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the JSONL files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        rows = examples(read_ground_truth(sdist))
    parts = split(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts = Counter(r["label"] for r in part)
        print(f"{name}: {len(part)} examples, {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
