"""One comparison table from several `lmforge eval` runs (their results.json files).

Usage:
    lmforge eval runs/a --tasks t1,t2 --out evals/a
    lmforge eval runs/b --tasks t1,t2 --out evals/b
    python bench/eval_table.py evals/a/results.json evals/b/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.evaluate.harness import results_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files")
    args = parser.parse_args()
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
    print(results_markdown(reports), end="")


if __name__ == "__main__":
    main()
