"""Safe outputs: the shared `--out` check, checkpoint pruning, manifests, orphan temp files and
a resume with nothing usable left."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.config.train import TrainConfig
from lmforge.data.lm import TokenWindows
from lmforge.errors import CheckpointError, ConfigError
from lmforge.objectives import causal_lm_loss
from lmforge.train import fit
from lmforge.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    prune,
    save_checkpoint,
    step_dir,
    verify,
)
from lmforge.utils.fs import RUN_MARKER, clean_orphan_temps, out_dir_kind, prepare_out_dir


def test_out_refuses_an_unrelated_folder_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="folder with other files.*--overwrite"):
        prepare_out_dir(out, "pretrain")
    prepare_out_dir(out, "pretrain", overwrite=True)
    assert (out / "config.json").read_text() == "{}"  # --overwrite writes, it does not wipe
    assert out_dir_kind(out) == "pretrain"


def test_out_is_never_an_input(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for inputs in ([model], [str(model) + "/"], [None, tmp_path / "x" / ".." / "model"]):
        with pytest.raises(ConfigError, match="also an input"):
            prepare_out_dir(model, "finetune", inputs=inputs, overwrite=True)


def test_new_empty_and_same_kind_folders(tmp_path):
    prepare_out_dir(tmp_path / "new", "convert")
    assert json.loads((tmp_path / "new" / RUN_MARKER).read_text())["kind"] == "convert"
    prepare_out_dir(tmp_path / "new", "convert")  # the same kind again is fine
    with pytest.raises(ConfigError, match="an lmforge convert output, not an lmforge finetune"):
        prepare_out_dir(tmp_path / "new", "finetune")
    with pytest.raises(ConfigError, match="--resume needs an earlier pretrain run"):
        prepare_out_dir(tmp_path / "empty", "pretrain", resume=True)


def _ckpt(path, step, run_id):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "run_id": run_id}))


def test_a_finished_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    prepare_out_dir(out, "pretrain")
    _ckpt(step_dir(out / "checkpoints", 5), 5, "old")
    (out / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="earlier pretrain run with checkpoints; add --resume"):
        prepare_out_dir(out, "pretrain")
    prepare_out_dir(out, "pretrain", resume=True)
    prepare_out_dir(out, "pretrain", overwrite=True)  # start over: the old checkpoints go
    assert list_checkpoints(out / "checkpoints") == []
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"


def test_prune_touches_only_this_runs_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _ckpt(step_dir(root, step), step, "this")
    _ckpt(step_dir(root, 4), 4, "other")
    (root / "step-00000000").mkdir()  # a user's folder, no trainer state
    (root / "step-final").mkdir()  # not a checkpoint name at all
    prune(root, keep=1, run_id="this")
    left = sorted(p.name for p in root.iterdir())
    assert left == ["step-00000000", "step-00000003", "step-00000004", "step-final"]


def _save(root, step):
    from lmforge.config import ModelConfig

    cfg = ModelConfig.from_preset("gpt-tiny", vocab_size=64)
    w = {"w": torch.ones(2)}
    return save_checkpoint(step_dir(root, step), cfg, w, {"state": {}, "param_groups": []}, {})


def test_manifest_must_list_every_file(tmp_path):
    path = _save(tmp_path, 1)
    assert verify(path)
    (path / "extra.bin").write_bytes(b"x")
    assert not verify(path)
    (path / "extra.bin").unlink()
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["rng.safetensors"]
    (path / "rng.safetensors").unlink()
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert not verify(path)  # a required file missing from both is still incomplete


def test_every_checkpoint_corrupt_is_an_error(tmp_path):
    assert latest_checkpoint(tmp_path) is None  # nothing saved yet: start fresh
    for step in (1, 2):
        (_save(tmp_path, step) / "model.safetensors").write_bytes(b"broken")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="every checkpoint"):
        latest_checkpoint(tmp_path)


def test_orphan_temp_files_are_cleaned_on_the_next_start(tmp_path):
    tokens = (torch.arange(400) % 17).numpy().astype("uint16")
    data = TokenWindows(tokens, 8, 2)
    cfg = TrainConfig(max_steps=2, eval_every=2, log_every=1, device="cpu", warmup_steps=1)
    from lmforge.config import ModelConfig
    from lmforge.models import Transformer

    out = tmp_path / "run"
    out.mkdir()
    (out / ".metrics.jsonl.k2j3.tmp").write_text("half")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / ".tmp-step-00000002-abcd").mkdir()
    (out / "keep.tmp").write_text("a user file")
    model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=32, max_seq_len=16))
    fit(model, causal_lm_loss, data, None, cfg, out, progress=False)
    names = {p.name for p in out.iterdir()} | {p.name for p in (out / "checkpoints").iterdir()}
    assert ".metrics.jsonl.k2j3.tmp" not in names and ".tmp-step-00000002-abcd" not in names
    assert "keep.tmp" in names and "step-00000002" in names
    assert clean_orphan_temps(tmp_path / "absent") == []


def _cli(monkeypatch, capsys, *args):
    import sys

    from lmforge.cli import main

    monkeypatch.setattr(sys, "argv", ["lmforge", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code, capsys.readouterr().err


def test_every_verb_with_out_refuses_its_input(monkeypatch, capsys, tiny_run):
    model = str(tiny_run.out_dir)
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.out_dir.iterdir()}
    for args in (
        ["finetune", model, "--task", "sft", "--train", model + "/summary.json", "--out", model],
        ["convert", "--to-hf", model, "--out", model],
        ["extend-context", model, "--out", model],
        ["tokenizer", "train", "--data", model, "--out", model],
        ["pretrain", "--init", model, "--out", model],
        ["data", "prepare", "--data", model, "--tokenizer", model, "--out", model],
    ):
        code, err = _cli(monkeypatch, capsys, *args)
        assert code == 2 and "also an input" in err, (args, err)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.out_dir.iterdir()} == before
