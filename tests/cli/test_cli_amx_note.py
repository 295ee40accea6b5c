"""`lmforge serve` on a CPU with AMX bf16 units points at --dtype bfloat16, once, on stderr,
and only when the dtype was left to its default and the model is large enough to gain."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

import lmforge.cli.serve
import lmforge.serve
import lmforge.utils.device
from lmforge.config import ModelConfig
from lmforge.models import Transformer


@pytest.mark.parametrize(
    ("amx", "size", "extra", "noted"),
    [
        (True, 135_000_000, [], True),
        (True, 135_000_000, ["--dtype", "float32"], False),
        (True, 10_000_000, [], False),
        (False, 135_000_000, [], False),
    ],
)
def test_serve_notes_bf16_on_an_amx_cpu(monkeypatch, capsys, tmp_path, amx, size, extra, noted):
    served = {}
    monkeypatch.setattr(lmforge.utils.device, "cpu_has_amx_bf16", lambda: amx)
    monkeypatch.setattr(lmforge.cli.serve, "parameter_count", lambda model_dir: size)
    monkeypatch.setattr(lmforge.serve, "serve", lambda model_dir, **kw: served.update(kw))
    code, _, err = run_cli(monkeypatch, capsys, "serve", str(tmp_path), "--device", "cpu", *extra)
    assert code == 0 and served["dtype"] == (extra[1] if extra else "auto")
    assert ("--dtype bfloat16" in err) is noted


def test_parameter_count_reads_the_config_without_weights(tmp_path):
    cfg = ModelConfig.from_preset("gpt-tiny")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    expected = sum(p.numel() for p in Transformer(cfg).parameters())
    assert lmforge.cli.serve.parameter_count(tmp_path) == expected
    assert lmforge.cli.serve.parameter_count(tmp_path / "missing") == 0
