"""Work survives SIGKILL at any moment (also mid-save) and SIGTERM/SIGINT save and exit 0."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lmforge.train.checkpoint import latest_checkpoint

WORKER = Path(__file__).with_name("dist_worker.py")
STEPS = 30


def _cmd(out: Path, resume: bool) -> list[str]:
    # single process, checkpoint after every step so that kills often land inside a save
    return [
        sys.executable,
        str(WORKER),
        str(out),
        "none",
        "8",
        "0",
        "1" if resume else "0",
        "1",
        str(STEPS),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _losses(out: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def _final_weights(out: Path) -> dict:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_cmd(out, False), env=_env(), check=True, timeout=300)
    return out


def _wait_for_training(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        if proc.poll() is not None or time.time() - t0 > timeout:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path, reference):
    out = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    resume = False
    while kills < 4:
        proc = subprocess.Popen(_cmd(out, resume), env=_env(), stderr=subprocess.DEVNULL)
        _wait_for_training(out, proc)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:  # finished before the kill: start over from scratch
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        resume = True
    subprocess.run(_cmd(out, True), env=_env(), check=True, timeout=300)
    assert kills >= 2
    assert _losses(out) == _losses(reference)
    ref_w, got_w = _final_weights(reference), _final_weights(out)
    assert ref_w.keys() == got_w.keys()
    assert all(bool((ref_w[k] == got_w[k]).all()) for k in ref_w)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_and_exit_zero(tmp_path, reference, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, False), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for_training(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    saved = latest_checkpoint(out / "checkpoints")
    step = json.loads((saved / "trainer_state.json").read_text())["step"]
    assert step == _losses(out)[-1][0]  # the checkpoint is the last finished step
    subprocess.run(_cmd(out, True), env=_env(), check=True, timeout=300)
    assert _losses(out) == _losses(reference)


@pytest.mark.slow
def test_cli_run_stops_on_sigterm_and_resumes(tmp_path):
    """`lmforge pretrain` stops after the checkpoint (no report of a half-trained model), says how
    to go on, exits 143; the same command with --resume finishes the run."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "lmforge", "pretrain", "--preset", "gpt-tiny", "--out", str(out),
        "--max-steps", "120", "batch_size=2", "seq_len=16", "vocab_size=300", "eval_every=1000",
        "save_every=1000", "log_every=1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_training(out, proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    assert "trained " not in stdout  # no summary of a finished run
    step = json.loads((latest_checkpoint(out / "checkpoints") / "trainer_state.json").read_text())
    assert 0 < step["step"] < 120
    done = subprocess.run(
        [*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _losses(out)[-1][0] == 120
