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
    by_model: dict[str, dict] = {}  # runs of one model (different tasks) share a column
    for path in args.results:
        report = json.loads(path.read_text(encoding="utf-8"))
        by_model.setdefault(report["model"], {"model": report["model"], "results": {}})
        by_model[report["model"]]["results"].update(report["results"])
    print(results_markdown(list(by_model.values())), end="")


if __name__ == "__main__":
    main()
