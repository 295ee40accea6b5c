"""torchrun with 2 CPU processes (gloo) equals 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(
    out: Path,
    strategy: str,
    nproc: int,
    batch: int,
    crash_after: int = 0,
    resume: bool = False,
    chunk_vocab: int = 0,
) -> list[float]:
    path = os.pathsep.join(p for p in (str(WORKER.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env["CHUNK_VOCAB"] = str(chunk_vocab)
    args = [str(out), strategy, str(batch), str(crash_after), "1" if resume else "0"]
    if nproc == 1 and strategy == "none":
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            f"--master-port={_free_port()}", str(WORKER), *args,
        ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("single"), "none", 1, 8)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, single, strategy):
    losses = _run(tmp_path, strategy, 2, 4)
    assert len(losses) == len(single) == 8
    assert max(abs(a - b) for a, b in zip(losses, single, strict=True)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_chunked_loss_under_two_ranks_matches_one_process(tmp_path, single, strategy):
    """The chunked LM-head loss through the DDP wrapper (FSDP's sharded head falls back to
    full logits) trains as one process with full logits does."""
    losses = _run(tmp_path, strategy, 2, 4, chunk_vocab=1)
    assert max(abs(a - b) for a, b in zip(losses, single, strict=True)) < 1e-5


@pytest.mark.slow
def test_checkpoint_from_two_ranks_resumes_with_one(tmp_path, single):
    _run(tmp_path, "ddp", 2, 4, crash_after=6)  # dies at step 6; the checkpoint is step 4
    losses = _run(tmp_path, "none", 1, 8, resume=True)
    assert max(abs(a - b) for a, b in zip(losses, single, strict=True)) < 1e-5


@pytest.mark.slow
def test_pretrain_cli_under_torchrun(tmp_path):
    """The command documented in docs/distributed.md, on 2 CPU processes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(300))
    )
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
        "-m", "lmforge", "pretrain", "--preset", "gpt-tiny", "--data", str(corpus), "--out", str(out),
        "--max-steps", "4", "--strategy", "ddp", "batch_size=4", "seq_len=32", "eval_every=2", "vocab_size=300",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained ") == 1  # rank 0 alone reports
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4
