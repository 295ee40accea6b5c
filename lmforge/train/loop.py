"""The one training loop, used by pretraining and by every kind of fine-tuning.

    for step in range(start, max_steps):
        lr = get_lr(step)                                  # warm-up + cosine, a pure function
        for micro in range(grad_accum):                    # gradient accumulation
            loss = objective(model, data.batch(step, micro)) / grad_accum
            loss.backward()
        clip_grad_norm_(params, grad_clip); optimizer.step(); optimizer.zero_grad()
        every log_every:  metrics.jsonl line (step, loss, lr, tokens_per_s)
        every eval_every: held-out loss and perplexity; best model -> out_dir; checkpoint -> last

Objectives and data differ between tasks; the loop does not.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from lmforge.config.train import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.models.io import save_model
from lmforge.objectives import LossOutput
from lmforge.train.checkpoint import load_checkpoint, recover, save_checkpoint
from lmforge.train.optim import build_optimizer, get_lr
from lmforge.utils.fs import atomic_write_text

Batch = dict[str, torch.Tensor]
Objective = Callable[[torch.nn.Module, Batch], LossOutput]


class BatchSource(Protocol):
    def batch(self, step: int, micro: int = 0, rank: int = 0) -> Batch: ...


class TrainingError(LmforgeError):
    """Training cannot go on (for example, the loss became NaN)."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    last_loss: float
    best_eval_loss: float | None
    stopped_early: bool = False
    interrupted: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware supports it ("auto"), else full precision."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate_loss(
    model: torch.nn.Module,
    objective: Objective,
    batches: Iterable[Batch],
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss (and metrics) over held-out batches; perplexity = exp(loss)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            with _autocast(device, amp):
                out = objective(model, to_device(batch, device))
            total += float(out.loss) * out.n_tokens
            n += out.n_tokens
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + v * out.n_tokens
    model.train(was_training)
    if n == 0:
        raise TrainingError("the held-out data produced no targets; add more validation text.")
    loss = total / n
    result = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}
    result.update({f"eval_{k}": v / n for k, v in sums.items()})
    return result


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _StopSignal:
    """SIGTERM/SIGINT set a flag: the current step finishes, a checkpoint is saved, exit 0."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _read_metrics(path: Path, upto: int) -> list[str]:
    if not path.exists():
        return []
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= upto:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    return keep


def fit(
    model: torch.nn.Module,
    objective: Objective,
    train_data: BatchSource,
    eval_data: Callable[[], Iterable[Batch]] | None,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    save_extra: Callable[[Path], None] | None = None,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` on `objective` and write the run to `out_dir`.

    Args:
        model: any lmforge model (its parameters with requires_grad are trained).
        objective: (model, batch) -> LossOutput.
        train_data: `.batch(step, micro)` gives the micro-batch of a step (seekable).
        eval_data: returns a fresh iterable of held-out batches, or None for no evaluation.
        cfg: the training config.
        out_dir: run dir: best model files, checkpoints/last, metrics.jsonl, loss.png.
        resume: continue from `out_dir/checkpoints/last` when it exists.
        save_extra: writes extra files (tokenizer) into a model dir being saved.
        progress: show a progress bar.
        on_log: called with every metrics record (for tests and callers).
    """
    from lmforge.utils.plots import plot_losses

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    last_dir = out_dir / "checkpoints" / "last"
    metrics_path = out_dir / "metrics.jsonl"

    start, best = 0, None
    history: list[str] = []
    if resume and recover(last_dir) is not None:
        state = load_checkpoint(last_dir, model, optimizer)
        start, best = state["step"], state.get("best_eval_loss")
        history = _read_metrics(metrics_path, start)
    atomic_write_text(metrics_path, "".join(line + "\n" for line in history))
    atomic_write_text(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))

    step_fn = torch.compile(model) if cfg.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    bad_evals, stopped_early, last_loss = 0, False, float("nan")
    tokens_since, t_since = 0, time.perf_counter()

    saved_at = start if start else -1

    def checkpoint(step: int) -> None:
        nonlocal saved_at
        save_checkpoint(last_dir, model, optimizer, {"step": step, "best_eval_loss": best})
        saved_at = step

    bar = tqdm(total=cfg.max_steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    model.train()
    done = start
    with _StopSignal() as stop, open(metrics_path, "a", encoding="utf-8") as log:
        for step in range(start, cfg.max_steps):
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, step_metrics = 0.0, {}
            for micro in range(cfg.grad_accum):
                batch = to_device(train_data.batch(step, micro), device)
                with _autocast(device, amp):
                    out = objective(step_fn, batch)
                (out.loss / cfg.grad_accum).backward()
                step_loss += float(out.loss.detach()) / cfg.grad_accum
                for k, v in out.metrics.items():
                    step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum
                tokens_since += int(batch["input_ids"].numel())
            if not math.isfinite(step_loss):
                raise TrainingError(
                    f"the loss became {step_loss} at step {step + 1}; lower lr or check the data."
                )
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = step_loss
            done = step + 1
            bar.update(1)

            record: dict[str, Any] | None = None
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                elapsed = time.perf_counter() - t_since
                record = {
                    "step": done,
                    "loss": step_loss,
                    "lr": lr,
                    "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                    **step_metrics,
                }
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                tokens_since, t_since = 0, time.perf_counter()
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            is_eval = eval_data is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps)
            if is_eval:
                ev = evaluate_loss(model, objective, eval_data(), device, amp)
                record = {**(record or {"step": done, "loss": step_loss, "lr": lr}), **ev}
                if best is None or ev["eval_loss"] < best:
                    best, bad_evals = ev["eval_loss"], 0
                    save_model(model, out_dir)
                    if save_extra is not None:
                        save_extra(out_dir)
                else:
                    bad_evals += 1
                bar.set_postfix(loss=f"{step_loss:.3f}", eval=f"{ev['eval_loss']:.3f}")
            if record is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_log is not None:
                    on_log(record)
            if is_eval:
                checkpoint(done)
                plot_losses(metrics_path, out_dir / "loss.png")
                t_since = time.perf_counter()  # tokens/s measures training, not evaluation
                if cfg.patience is not None and bad_evals >= cfg.patience:
                    stopped_early = True
                    break
            if stop.received is not None:
                checkpoint(done)
                bar.close()
                return TrainResult(out_dir, done, last_loss, best, interrupted=True)
    bar.close()
    if eval_data is None:
        save_model(model, out_dir)
        if save_extra is not None:
            save_extra(out_dir)
    if saved_at != done:
        checkpoint(done)
    plot_losses(metrics_path, out_dir / "loss.png")
    return TrainResult(out_dir, done, last_loss, best, stopped_early=stopped_early)
