"""Crafted config.json, safetensors and GGUF files that lie about sizes and types: each one is
refused with one sentence, fast, and the process never holds more than 2 GB while loading them
(`hostile_files.py` lists the cases; it runs in its own process so the peak is its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, str(HERE / "hostile_files.py"), str(tmp_path_factory.mktemp("hostile"))],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_crafted_file_is_one_sentence_fast_and_under_2_gb(outcomes):
    assert len(outcomes) >= 30
    for r in outcomes:
        if r["expect"] == "loaded":
            assert r["outcome"] == "loaded", r
        else:
            assert r["outcome"] not in ("loaded", "traceback"), r
            message = r["error"]
            assert message.endswith(".") and "Traceback" not in message and "\n" not in message
        assert r["seconds"] < 30, r
    peak = max(r["peak_rss_mb"] for r in outcomes)
    assert peak < 2048, peak


def test_the_errors_name_what_is_wrong(outcomes):
    by_case = {r["case"]: r["error"] or "" for r in outcomes}
    assert "n_layer=1000000000" in by_case["gguf_blocks_1e9"]
    assert "n_layer=1000000000" in by_case["config_n_layer_1e9"]
    assert "general.alignment" in by_case["gguf_alignment_str"]
    assert "llama.attention.head_count" in by_case["gguf_head_count_strs"]
    assert "llama.rope.freq_base" in by_case["gguf_rope_base_nan"]
    assert "bos_token_id" in by_case["gguf_bos_id_array"]
    assert "'a' twice" in by_case["gguf_duplicate_tokens"]
    assert "'zz'" in by_case["gguf_unknown_merge"]
    assert "norm_eps" in by_case["config_norm_eps_nan"]
    assert "decoder.layers.0" in by_case["weights_nan"]
    assert "not UTF-8" in by_case["config_latin1"]
    assert "JSON list" in by_case["config_list"]
