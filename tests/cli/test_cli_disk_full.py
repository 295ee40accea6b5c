"""A full disk is said as such (one sentence, exit 1), not as an lmforge bug."""

from __future__ import annotations

import errno

import pytest
from cli_helpers import run_cli

import lmforge.recipes.quickstart
from lmforge.cli.checks import disk_full


def test_disk_full_is_told_apart_from_other_errors():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(RuntimeError("Error while serializing: I/O error: No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("bad"))


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("No space left on device")],
)
def test_a_full_disk_is_one_sentence(monkeypatch, capsys, tmp_path, exc):
    def full(*args, **kwargs):
        raise exc

    monkeypatch.setattr(lmforge.recipes.quickstart, "quickstart", full)
    code, _, err = run_cli(monkeypatch, capsys, "quickstart", "--out", str(tmp_path / "q"))
    assert code == 1 and "the disk is full" in err and "failed unexpectedly" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
