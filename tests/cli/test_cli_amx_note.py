"""`lmforge serve` on a CPU with AMX bf16 units points at --dtype bfloat16, once, on stderr,
and only when the dtype was left to its default."""

from __future__ import annotations

import pytest
from cli_helpers import run_cli

import lmforge.serve
import lmforge.utils.device


@pytest.mark.parametrize(
    ("amx", "extra", "noted"),
    [(True, [], True), (True, ["--dtype", "float32"], False), (False, [], False)],
)
def test_serve_notes_bf16_on_an_amx_cpu(monkeypatch, capsys, tmp_path, amx, extra, noted):
    served = {}
    monkeypatch.setattr(lmforge.utils.device, "cpu_has_amx_bf16", lambda: amx)
    monkeypatch.setattr(lmforge.serve, "serve", lambda model_dir, **kw: served.update(kw))
    code, _, err = run_cli(monkeypatch, capsys, "serve", str(tmp_path), "--device", "cpu", *extra)
    assert code == 0 and served["dtype"] == (extra[1] if extra else "auto")
    assert ("--dtype bfloat16" in err) is noted
