"""The prune -> distill pipeline end to end on tiny models: stage dirs that load, report rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lmforge.compress.pipeline import CompressConfig, compress
from lmforge.errors import ConfigError
from lmforge.models import load_model
from lmforge.recipes.finetuned import read_task_info

SMALL = {"speed_batches": 1, "speed_batch": 8, "batch_size": 16, "threads": 1}


def test_structured_prune_and_distill_a_classifier(toy_classifier, tmp_path):
    cc = CompressConfig(prune="structured", ffn_fraction=0.5, head_fraction=0.5, max_steps=6,
                        lr=3e-3, quantize="int8", **SMALL)  # fmt: skip
    result = compress(toy_classifier["model"], tmp_path, cc, train=toy_classifier["train"],
                      valid=toy_classifier["valid"], test=toy_classifier["test"],
                      log=lambda _: None)  # fmt: skip
    stages = [r["stage"] for r in result.rows]
    assert stages == ["original", "pruned", "distilled", "quantized (int8)"]
    original, pruned, distilled, quantized = result.rows
    assert quantized["file_bytes"] < 0.4 * distilled["file_bytes"]  # int8 linears and embedding
    reloaded = load_model(tmp_path / "quantized")  # the record rebuilds the int8 modules
    ids = torch.tensor([[2, 5, 9, 11, 3]])
    torch.testing.assert_close(reloaded(ids).logits, result.model(ids).logits)
    assert type(reloaded.embed.tok).__name__ == "Int8Embedding"
    assert pruned["parameters"] < original["parameters"]
    assert pruned["file_bytes"] < original["file_bytes"]
    assert 0.0 <= distilled["accuracy"] <= 1.0 and distilled["speed"] > 0
    model = load_model(tmp_path / "distilled")
    base = load_model(toy_classifier["model"]).cfg
    assert model.cfg.layer_d_ff == [base.d_ff // 2] * base.n_layer
    assert model.cfg.layer_n_head == [base.n_head // 2] * base.n_layer
    assert read_task_info(tmp_path / "distilled")["labels"] == ["neg", "pos"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["stage"] for r in report["stages"]] == stages
    assert "| distilled |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 0


def test_iterative_magnitude_pruning_with_lora_keeps_the_sparsity(toy_lm, tmp_path):
    cc = CompressConfig(prune="magnitude", sparsity=0.5, prune_steps=2, method="lora",
                        max_steps=3, seq_len=32, **SMALL)  # fmt: skip
    result = compress(toy_lm["model"], tmp_path, cc, train=toy_lm["train"],
                      test=toy_lm["test"], log=lambda _: None)  # fmt: skip
    assert [r["stage"] for r in result.rows] == ["original", "pruned", "distilled"]
    for row in result.rows[1:]:
        block_share = 1 - row["nonzero_parameters"] / row["parameters"]
        assert block_share > 0.2  # half of the block weights are zero, embeddings are dense
        assert row["perplexity"] > 1.0
    assert (tmp_path / "round-1").is_dir()
    from lmforge.compress.prune import sparsity_of

    assert sparsity_of(load_model(tmp_path / "distilled")) == pytest.approx(0.5, abs=0.01)


def test_bad_inputs_get_one_sentence(toy_classifier, tmp_path):
    with pytest.raises(ConfigError, match="prune must be one of"):
        CompressConfig(prune="sideways")
    with pytest.raises(ConfigError, match="--train"):
        compress(toy_classifier["model"], tmp_path, CompressConfig(**SMALL),
                 test=toy_classifier["test"])  # fmt: skip


def test_cli_prune_then_every_verb_loads_the_result(toy_classifier, toy_lm, tmp_path,
                                                    monkeypatch, capsys):  # fmt: skip
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cli_helpers import run_cli

    out = tmp_path / "pruned-cls"
    code, text, err = run_cli(
        monkeypatch,
        capsys,
        "prune",
        toy_classifier["model"],
        "--out",
        out,
        "--importance",
        "gradient",
        "--train",
        toy_classifier["train"],
    )
    assert code == 0, err
    assert "fewer" in text
    code, text, err = run_cli(monkeypatch, capsys, "evaluate", out, "--data",
                              toy_classifier["test"])  # fmt: skip
    assert code == 0 and "accuracy" in text, err
    lm = tmp_path / "pruned-lm"
    code, _, err = run_cli(monkeypatch, capsys, "prune", toy_lm["model"], "--out", lm,
                           "--ffn-fraction", "0.5", "--head-fraction", "0.5")  # fmt: skip
    assert code == 0, err
    code, text, err = run_cli(monkeypatch, capsys, "generate", lm, "--prompt", "the film",
                              "--max-new-tokens", "4")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "convert", "--to-hf", lm, "--out", tmp_path / "hf")
    assert code == 2 and "per-block sizes" in err
    code, _, err = run_cli(monkeypatch, capsys, "prune", toy_lm["model"], "--out", lm,
                           "--sparsity", "1.5", "--method", "magnitude")  # fmt: skip
    assert code == 2 and "sparsity must be in [0, 1)" in err and "Traceback" not in err


def test_speed_batches_sorted_by_length_hold_the_same_examples(toy_classifier):
    from lmforge.compress.data import StageData
    from lmforge.recipes.finetuned import load_finetuned

    model = load_finetuned(toy_classifier["model"])
    info = read_task_info(toy_classifier["model"])
    built = {}
    for sort in (False, True):
        cc = CompressConfig(speed_batch=4, speed_batches=3, speed_sort=sort)
        sd = StageData.build(toy_classifier["model"], model, info, None, None,
                             toy_classifier["test"], cc)  # fmt: skip
        built[sort] = sd.speed_batches()
    rows = {k: sorted(tuple(r[m.bool()].tolist()) for b in v
                      for r, m in zip(b["input_ids"], b["attention_mask"], strict=True))
            for k, v in built.items()}  # fmt: skip
    assert rows[True] == rows[False] and len(rows[True]) == 12  # the same 12 examples
    lengths = [int(m.sum()) for b in built[True] for m in b["attention_mask"]]
    assert lengths == sorted(lengths)
    padded = {k: sum(b["input_ids"].numel() for b in v) for k, v in built.items()}
    assert padded[True] <= padded[False]
