"""The one training loop, used by pretraining and by every kind of fine-tuning.

    run = _start(...)                                 # device, wrapper, optimizer, resume
    while run.step < max_steps:
        step = train_step(run, objective, data, get_lr(run.step))   # never reads the device
        if not a log step: continue                   # log, eval, save or last step
        settle(run, pending)     # the one host sync: which steps were non-finite (skipped)
        _report(run, step)       # log_record -> metrics.jsonl; evaluate -> best model;
                                 # run.checkpoint() -> checkpoints/step-NNNNNNNN
        stop early (patience) or on a signal

A step's loss, gradient norm and non-finite flag stay on the device: a non-finite step is
skipped inside fused AdamW's kernel (`optim.masked_step`) and counted on the next log step, so
on a GPU the host queues steps ahead of the device instead of waiting for each. The process
group is the caller's (`distributed.process_group`). Objectives and data differ between tasks;
the loop does not.
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
from lmforge.errors import RunInterrupted
from lmforge.objectives import LossOutput
from lmforge.train import distributed as D
from lmforge.train.checkpoint import clean_stale
from lmforge.train.optim import build_optimizer, clip_scale, get_lr, masked_step
from lmforge.train.report import (
    WallClock,
    note,
    peak_memory_mb,
    precision_note,
    read_metrics,
    warmup_warning,
)
from lmforge.train.run import Run, TrainingError, select_score
from lmforge.utils.device import resolve_device
from lmforge.utils.fs import atomic_write_text, clean_orphan_temps

Batch = dict[str, torch.Tensor]
Objective = Callable[[torch.nn.Module, Batch], LossOutput]


class BatchSource(Protocol):
    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> Batch: ...


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    last_loss: float
    best_eval_loss: float | None  # eval_loss of the best evaluation
    stopped_early: bool = False
    interrupted: bool = False
    best_score: float | None = None  # cfg.select_metric at the best evaluation
    signum: int | None = None  # the signal that interrupted the run (on the rank that got it)

    def raise_if_interrupted(self) -> None:
        """Stop a recipe after an interrupted run (its checkpoint is saved) instead of going on
        to evaluate and report a half-trained model: raises `RunInterrupted`."""
        if self.interrupted:
            raise RunInterrupted(
                f"training stopped by a signal at step {self.steps}; its checkpoint is in "
                f"{self.out_dir / 'checkpoints'}; run the same command with --resume to continue.",
                self.signum or signal.SIGTERM,
            )


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
    """Token-weighted mean loss (and metrics) over held-out batches; perplexity = exp(loss).

    An objective may define `summarize(means) -> metrics`: it gets the token-weighted means of
    its metrics and returns the numbers to report, for corpus-level scores that are not means
    of batch scores (macro-F1 from per-class rates, entity F1 from span counts).
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            with _autocast(device, amp):
                out = objective(model, to_device(batch, device))
            count = int(out.n_tokens)
            total += float(out.loss) * count
            n += count
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * count
    model.train(was_training)
    if n == 0:
        raise TrainingError("the held-out data produced no targets; add more validation text.")
    loss = total / n
    result = {"eval_loss": loss}
    if getattr(objective, "perplexity", True):  # exp(loss) means nothing for a class loss
        result["eval_ppl"] = math.exp(min(loss, 50.0))
    means = {k: v / n for k, v in sums.items()}
    summarize = getattr(objective, "summarize", None)
    if summarize is not None:
        means = summarize(means)
    result.update({f"eval_{k}": v for k, v in means.items()})
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


def _grad_norm(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Total gradient norm (the gradients clipped to `clip` in place when > 0), a tensor on the
    device (no host sync); inf/NaN when a gradient is not finite."""
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return norm.detach()


def grad_scaler(amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its small range underflows small gradients to zero); a disabled
    scaler (a no-op) for bf16 and fp32. A step whose scaled gradients overflow is skipped by the
    scaler and the scale halved; it doubles after 2000 clean steps."""
    return torch.amp.GradScaler(device.type, enabled=amp == torch.float16)


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
    export: Callable[[Path], None] | None = None,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` on `objective` and write the run to `out_dir`.

    Args:
        model: any lmforge model (its parameters with requires_grad are trained).
        objective: (model, batch) -> LossOutput.
        train_data: `.batch(step, micro, rank, world)` gives this rank's micro-batch (seekable).
        eval_data: returns a fresh iterable of held-out batches, or None for no evaluation.
        cfg: the training config (`strategy` picks DDP/FSDP under torchrun).
        out_dir: run dir: best model files, checkpoints/step-*, metrics.jsonl, loss.png.
        resume: continue from the newest complete checkpoint in `out_dir/checkpoints`.
        save_extra: writes extra files (the tokenizer) into a model dir being saved.
        export: replaces the default model export (full weights) of the best model, e.g. to
            write a PEFT model as base weights plus adapter files; called on rank 0.
        progress: show a progress bar (rank 0 only).
        on_log: called with every metrics record (for tests and callers).
    """
    device = resolve_device(cfg.device)
    info = D.setup(cfg.strategy, device)  # joins the caller's process group when there is one
    try:
        return _fit(
            model, objective, train_data, eval_data, cfg, Path(out_dir), info,
            D.local_device(device, info), resume=resume, save_extra=save_extra, export=export,
            progress=progress, on_log=on_log,
        )  # fmt: skip
    finally:
        if info.owns_group:  # fit started it, so fit ends it
            D.teardown(info)


@dataclass
class _Step:
    """What one optimizer step left behind: tensors stay on the device until a log step."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    bad: torch.Tensor  # 0-d bool: non-finite on some rank, so the update was not applied
    metrics: dict[str, float | torch.Tensor]
    tokens: int
    lr: float
    batch: int  # the data step it consumed


def train_step(run: Run, objective: Objective, train_data: BatchSource, lr: float) -> _Step:
    """One optimizer step: forward/backward over `grad_accum` micro-batches, clip, update.

    loss = mean over micro-batches of objective(model, batch); gradients are those of loss (each
    micro-batch's loss is divided by grad_accum; under DDP only the last one all-reduces). The
    update is skipped on the device when

        bad = any rank: loss not finite, or (without fp16 loss scaling) grad norm not finite

    so the host never waits for the device here: `run.step` counts the step provisionally and
    `settle` takes it back on the next log step if it was bad. With fused AdamW (and no fp16
    loss scaling) the clipping factor goes into the optimizer's kernel too (`clip_scale`).
    """
    cfg, info, scaler = run.cfg, run.info, run.scaler
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss = torch.zeros((), device=run.device)
    metrics: dict[str, float | torch.Tensor] = {}
    tokens = 0
    for micro in range(cfg.grad_accum):
        batch = to_device(train_data.batch(run.data_step, micro, info.rank, info.world), run.device)
        sync = micro == cfg.grad_accum - 1 or info.strategy != "ddp"
        with contextlib.nullcontext() if sync else run.wrapped.no_sync():
            with _autocast(run.device, run.amp):
                out = objective(run.step_fn, batch)
            scaler.scale(out.loss / cfg.grad_accum).backward()
        loss += out.loss.detach().float() / cfg.grad_accum
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
        tokens += batch["input_ids"].numel() * info.world
    scaler.unscale_(run.optimizer)  # fp16 only
    grad_norm = _grad_norm(run.params, 0.0 if run.fold_clip else cfg.grad_clip)
    bad = ~torch.isfinite(loss)
    if scaler.is_enabled():  # fp16: the scaler skips a non-finite gradient itself
        bad = D.any_rank_tensor(bad, info)
        scaler.step(run.optimizer)
    else:
        bad = D.any_rank_tensor(bad | ~torch.isfinite(grad_norm), info)
        scale = clip_scale(grad_norm, cfg.grad_clip) if run.fold_clip else None
        masked_step(run.optimizer, bad, scale)
    scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    step = _Step(loss, grad_norm, bad, metrics, tokens, lr, run.data_step)
    run.data_step += 1
    run.step += 1  # provisional until `settle`
    return step


def settle(run: Run, pending: list[_Step], write: Callable[[dict], None]) -> _Step | None:
    """Read the flags of the steps trained since the last log step (one host sync for all of
    them): a bad step is written as a skipped batch and taken back from `run.step`.

    Raises TrainingError when `nonfinite="halt"` or after `max_skips` bad steps in a row.
    Returns the last step whose update was applied (None when there is none).
    """
    flags = torch.stack([s.bad for s in pending]).tolist() if pending else []
    run.step -= len(pending)
    last = None
    for step, bad in zip(pending, flags, strict=True):
        if bad:
            run.skips += 1
            write(_skipped(run, step))
        else:
            run.skips, last = 0, step
            run.step += 1
    pending.clear()
    return last


def _skipped(run: Run, step: _Step) -> dict[str, Any]:
    """The record of a skipped batch, or TrainingError when skipping may not go on."""
    what = f"loss {float(step.loss)} / gradient norm {float(step.grad_norm)}"
    if run.cfg.nonfinite == "halt" or run.skips >= run.cfg.max_skips:
        raise TrainingError(
            f"non-finite {what} at step {run.step + 1} (batch {step.batch}), "
            f"{run.skips} time(s) in a row; lower lr or check that batch of the data."
        )
    return {"step": run.step, "skipped_batch": step.batch, "reason": what}


def log_record(run: Run, step: _Step, tokens_per_s: float) -> dict[str, Any]:
    """The metrics.jsonl record of a logging step (collective: losses are means over ranks)."""
    return {
        "step": run.step,
        "loss": D.all_mean(step.loss, run.info),
        "lr": step.lr,
        "tokens_per_s": tokens_per_s,
        "grad_norm": float(step.grad_norm),
        "peak_mem_mb": peak_memory_mb(run.device),
        **{k: D.all_mean(v, run.info) for k, v in step.metrics.items()},
    }


def evaluate(
    run: Run, objective: Objective, eval_data: Callable[[], Iterable[Batch]]
) -> tuple[dict[str, float], bool]:
    """Held-out numbers; when they are the best so far (by cfg.select_metric), the weights are
    exported as the run's model. Returns (numbers, improved)."""
    ev = evaluate_loss(run.model, objective, eval_data(), run.device, run.amp)
    score = select_score(ev, run.cfg)
    better = run.best is None or (
        score < run.best if run.cfg.select_mode == "min" else score > run.best
    )
    if better:
        run.best, run.best_loss = score, ev["eval_loss"]
        run.export_best()
    return ev, better


class _Log:
    """Where a run reports: metrics.jsonl (rank 0), the progress bar, tokens/s since the last
    record, the wall-time estimate, the caller's `on_log`, and loss.png."""

    def __init__(self, run: Run, on_log: Callable[[dict], None] | None, progress: bool):
        main = run.info.is_main
        self.path = run.out_dir / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8") if main else None
        self.bar = tqdm(
            total=run.cfg.max_steps, initial=run.step, disable=not (progress and main),
            unit="step", dynamic_ncols=True,
        )  # fmt: skip
        self.clock = WallClock(run.step, run.cfg.max_steps) if main else None
        self.on_log = on_log
        self.tokens, self.since = 0, time.perf_counter()

    def trained(self, step: _Step, done: int) -> None:
        """After each step (host only): count its tokens, move the bar, say the estimate."""
        self.tokens += step.tokens
        self.bar.update(1)
        if self.clock is not None and (estimate := self.clock.step_done(done)) is not None:
            note(estimate)

    def record(self, run: Run, step: _Step) -> dict[str, Any]:
        """The record of `step` (collective), with the training tokens/s since the last one."""
        self.bar.update(run.step - self.bar.n)  # bad steps taken back by `settle`
        rate = self.tokens / max(time.perf_counter() - self.since, 1e-9)
        self.tokens, self.since = 0, time.perf_counter()
        record = log_record(run, step, rate)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{rate:.0f}")
        return record

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.on_log is not None and "skipped_batch" not in record:
            self.on_log(record)

    def evaluated(self) -> None:
        """After an evaluation: redraw loss.png; tokens/s measures training, not evaluation."""
        if self.file is not None:
            from lmforge.utils.plots import plot_losses

            plot_losses(self.path, self.path.parent / "loss.png")
        self.since = time.perf_counter()

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


def _fit(
    model: torch.nn.Module,
    objective: Objective,
    train_data: BatchSource,
    eval_data: Callable[[], Iterable[Batch]] | None,
    cfg: TrainConfig,
    out_dir: Path,
    info: D.DistInfo,
    device: torch.device,
    *,
    resume: bool,
    save_extra: Callable[[Path], None] | None,
    export: Callable[[Path], None] | None,
    progress: bool,
    on_log: Callable[[dict], None] | None,
) -> TrainResult:
    run = _start(model, cfg, out_dir, info, device, resume, save_extra, export)
    log = _Log(run, on_log, progress)
    try:
        return _loop(run, objective, train_data, eval_data, log)
    finally:
        log.close()
        run.unwrap()


def _every(done: int, every: int, cfg: TrainConfig) -> bool:
    return done % every == 0 or done == cfg.max_steps


def _log_step(run: Run, stop: _StopSignal) -> bool:
    """Whether the host reads the device after this step: a log, evaluation or checkpoint step,
    the last step, or (one process) a received signal. Alike on every rank."""
    cfg, n = run.cfg, run.step
    return (
        _every(n, cfg.log_every, cfg)
        or n % cfg.eval_every == 0
        or n % (cfg.save_every or cfg.eval_every) == 0
        or (run.info.world == 1 and stop.received is not None)
    )


def _loop(
    run: Run,
    objective: Objective,
    train_data: BatchSource,
    eval_data: Callable[[], Iterable[Batch]] | None,
    log: _Log,
) -> TrainResult:
    """Train steps; on log steps (the only host syncs) settle them, then log, evaluate and
    checkpoint; stop early, on a signal, or at max_steps."""
    cfg, info = run.cfg, run.info
    pending: list[_Step] = []  # trained since the last log step
    last: _Step | None = None  # the last step whose update was applied
    run.model.train()
    with _StopSignal() as stop:
        while run.step < cfg.max_steps:
            pending.append(train_step(run, objective, train_data, get_lr(run.step, cfg)))
            log.trained(pending[-1], run.step)
            if not _log_step(run, stop):
                continue
            if (new := settle(run, pending, log.write)) is not None:
                last = new
                _report(run, new, objective, eval_data, log)
                if cfg.patience is not None and run.bad_evals >= cfg.patience:
                    return _finish(run, last, eval_data is not None, log, stopped_early=True)
            if D.any_rank(stop.received is not None, info):
                if run.saved_at != run.step:
                    run.checkpoint()
                return TrainResult(
                    run.out_dir, run.step, _mean_loss(last, info), run.best_loss,
                    interrupted=True, best_score=run.best, signum=stop.received,
                )  # fmt: skip
    return _finish(run, last, eval_data is not None, log, stopped_early=False)


def _report(
    run: Run,
    step: _Step,
    objective: Objective,
    eval_data: Callable[[], Iterable[Batch]] | None,
    log: _Log,
) -> None:
    """After a settled step: its record (log steps), the evaluation and best model (eval
    steps, counting `run.bad_evals`), a checkpoint (eval and save steps)."""
    cfg, done = run.cfg, run.step
    is_eval = eval_data is not None and _every(done, cfg.eval_every, cfg)
    if is_eval or _every(done, cfg.log_every, cfg):
        record = log.record(run, step)
        if is_eval:
            ev, better = evaluate(run, objective, eval_data)
            run.bad_evals = 0 if better else run.bad_evals + 1
            record.update(ev)
            log.bar.set_postfix(loss=f"{record['loss']:.3f}", eval=f"{ev['eval_loss']:.3f}")
        log.write(record)
    if is_eval or done % (cfg.save_every or cfg.eval_every) == 0:
        run.checkpoint()
    if is_eval:
        log.evaluated()


def _mean_loss(step: _Step | None, info: D.DistInfo) -> float:
    """The loss of `step` averaged over ranks (collective); NaN when no update was applied."""
    return D.all_mean(step.loss if step is not None else float("nan"), info)


def _finish(
    run: Run, last: _Step | None, evaluated: bool, log: _Log, stopped_early: bool
) -> TrainResult:
    """The end of a run: the final model (when nothing was evaluated), a last checkpoint."""
    if not evaluated:
        run.export_best()
    if run.saved_at != run.step:
        run.checkpoint()
    log.evaluated()
    return TrainResult(
        run.out_dir, run.step, _mean_loss(last, run.info), run.best_loss,
        stopped_early=stopped_early, best_score=run.best,
    )  # fmt: skip


def _start(
    model: torch.nn.Module,
    cfg: TrainConfig,
    out_dir: Path,
    info: D.DistInfo,
    device: torch.device,
    resume: bool,
    save_extra: Callable[[Path], None] | None,
    export: Callable[[Path], None] | None,
) -> Run:
    """Model on its device and wrapped, optimizer, loss scaler; the run dir cleaned of killed
    writes; the newest checkpoint loaded (`resume`); metrics.jsonl cut back to it."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if cfg.activation_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    model.to(device)
    wrapped = D.wrap(model, info)
    optimizer = build_optimizer(model, cfg)
    run = Run(model, optimizer, cfg, out_dir, info, save_extra, export)
    run.device, run.amp, run.wrapped = device, autocast_dtype(cfg.precision, device), wrapped
    run.scaler = grad_scaler(run.amp, device)
    run.fold_clip = (  # fused AdamW divides by the clipping factor as it reads the gradients
        getattr(optimizer, "_step_supports_amp_scaling", False)
        and not run.scaler.is_enabled()
        and cfg.grad_clip > 0
    )
    run.step_fn = torch.compile(wrapped) if cfg.compile else wrapped
    run.params = [p for p in model.parameters() if p.requires_grad]
    metrics_path = out_dir / "metrics.jsonl"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run.ckpt_root)
        clean_orphan_temps(out_dir)
    D.barrier(info)
    resumed = resume and run.resume()
    if info.is_main:
        history = read_metrics(metrics_path, run.step) if resumed else []
        atomic_write_text(metrics_path, "".join(line + "\n" for line in history))
        atomic_write_text(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
        size = sum(p.numel() for p in model.parameters())
        for line in (warmup_warning(cfg), precision_note(cfg, device, size)):
            if line is not None:
                note(line)
    return run
