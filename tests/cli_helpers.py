"""Run `lmforge <verb>` in-process, as the console script would, and capture what it prints."""

from __future__ import annotations

import sys

from lmforge.cli import main


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lmforge *args`."""
    monkeypatch.setattr(sys, "argv", ["lmforge", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
