"""The one training loop, used by pretraining and by every kind of fine-tuning.

    for step in range(start, max_steps):
        lr = get_lr(step)                                  # warm-up + cosine, a pure function
        for micro in range(grad_accum):                    # gradient accumulation
            loss = objective(model, data.batch(step, micro)) / grad_accum
            loss.backward()
        clip_grad_norm_(params, grad_clip); optimizer.step(); optimizer.zero_grad()
        every log_every:  metrics.jsonl line (step, loss, lr, tokens_per_s)
        every eval_every: held-out loss and perplexity; best model (by select_metric) -> out_dir;
                          checkpoint -> last

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
from lmforge.models.io import save_weights
from lmforge.objectives import LossOutput
from lmforge.train import distributed as D
from lmforge.train.checkpoint import (
    clean_stale,
    latest_checkpoint,
    prune,
    read_checkpoint,
    save_checkpoint,
    step_dir,
    tied_names,
)
from lmforge.train.optim import build_optimizer, get_lr
from lmforge.utils.device import resolve_device
from lmforge.utils.fs import atomic_write_text

Batch = dict[str, torch.Tensor]
Objective = Callable[[torch.nn.Module, Batch], LossOutput]


class BatchSource(Protocol):
    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> Batch: ...


class TrainingError(LmforgeError):
    """Training cannot go on (for example, the loss became NaN)."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    last_loss: float
    best_eval_loss: float | None  # eval_loss of the best evaluation
    stopped_early: bool = False
    interrupted: bool = False
    best_score: float | None = None  # cfg.select_metric at the best evaluation


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
            total += float(out.loss) * out.n_tokens
            n += out.n_tokens
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + v * out.n_tokens
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _grad_norm(params: list[torch.Tensor], clip: float) -> float:
    """Total gradient norm (clipped to `clip` when > 0); inf/NaN when a gradient is not finite."""
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


class _Run:
    """State of one `fit` call shared by its helpers (rank, paths, counters)."""

    def __init__(
        self,
        model,
        optimizer,
        cfg: TrainConfig,
        out_dir: Path,
        info: D.DistInfo,
        save_extra,
        export,
    ):
        self.model, self.optimizer, self.cfg, self.out_dir, self.info = (
            model,
            optimizer,
            cfg,
            out_dir,
            info,
        )
        self.save_extra = save_extra
        self.export = export
        self.ckpt_root = out_dir / "checkpoints"
        self.skip = tied_names(model)
        self.step = 0  # optimizer steps done
        self.data_step = 0  # batches consumed (a skipped step consumes one without a step)
        self.best: float | None = None  # best value of cfg.select_metric
        self.best_loss: float | None = None  # eval_loss of that evaluation
        self.saved_at = -1

    def checkpoint(self) -> None:
        """Save a full checkpoint (collective: every rank takes part, rank 0 writes)."""
        model_state = D.full_model_state(self.model)
        optim_state = D.full_optimizer_state(self.model, self.optimizer)
        rngs = _gather_rng(self.info)
        if self.info.is_main:
            state = {
                "step": self.step,
                "data_step": self.data_step,
                "best_eval_loss": self.best_loss,
                "best_score": self.best,
            }
            save_checkpoint(
                step_dir(self.ckpt_root, self.step),
                self.model.cfg,
                model_state,
                optim_state,
                state,
                rngs,
                self.skip,
            )
            prune(self.ckpt_root, self.cfg.keep_last)
        D.barrier(self.info)
        self.saved_at = self.step

    def export_best(self) -> None:
        """Write the current weights as the run dir's model (collective unless `export` is set)."""
        if self.export is not None:  # e.g. base weights + adapter files for a PEFT model
            if self.info.is_main:
                self.export(self.out_dir)
            D.barrier(self.info)
            return
        model_state = D.full_model_state(self.model)
        if self.info.is_main:
            save_weights(
                self.model.cfg,
                {k: v for k, v in model_state.items() if k not in self.skip},
                self.out_dir,
            )
            if self.save_extra is not None:
                self.save_extra(self.out_dir)
        D.barrier(self.info)

    def resume(self) -> bool:
        path = latest_checkpoint(self.ckpt_root)
        if path is None:
            return False
        ck = read_checkpoint(path)
        D.load_full_state(self.model, self.optimizer, ck.model_state, ck.optim_state)
        rng = ck.rng_for(self.info.rank)
        if rng is not None:
            torch.set_rng_state(rng)
        if "cuda_rng" in ck.rng_states and torch.cuda.is_available():
            torch.cuda.set_rng_state(ck.rng_states["cuda_rng"])
        self.step = ck.state["step"]
        self.data_step = ck.state.get("data_step", self.step)
        self.best_loss = ck.state.get("best_eval_loss")
        self.best = ck.state.get("best_score", self.best_loss)
        self.saved_at = self.step
        return True


def _select(ev: dict[str, float], cfg: TrainConfig) -> float:
    """The number that ranks evaluations: ev[cfg.select_metric]."""
    if cfg.select_metric not in ev:
        raise TrainingError(
            f"select_metric '{cfg.select_metric}' is not among the evaluation's numbers "
            f"({', '.join(sorted(ev))}); pick one of them."
        )
    return ev[cfg.select_metric]


def _gather_rng(info: D.DistInfo) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if not info.enabled or info.world == 1:
        return [state]
    import torch.distributed as dist

    states = [torch.empty_like(state) for _ in range(info.world)]
    dist.all_gather(states, state)
    return states


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
    from lmforge.utils.plots import plot_losses

    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    info = D.setup(cfg.strategy, device)
    device = D.local_device(device, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    amp = autocast_dtype(cfg.precision, device)
    if cfg.activation_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    model.to(device)
    wrapped = D.wrap(model, info)
    optimizer = build_optimizer(model, cfg)
    run = _Run(model, optimizer, cfg, out_dir, info, save_extra, export)
    metrics_path = out_dir / "metrics.jsonl"
    main = info.is_main

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run.ckpt_root)
    D.barrier(info)
    resumed = resume and run.resume()
    if main:
        history = _read_metrics(metrics_path, run.step) if resumed else []
        atomic_write_text(metrics_path, "".join(line + "\n" for line in history))
        atomic_write_text(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))

    step_fn = torch.compile(wrapped) if cfg.compile else wrapped
    params = [p for p in model.parameters() if p.requires_grad]
    bad_evals, consecutive_skips, stopped_early, last_loss = 0, 0, False, float("nan")
    tokens_since, t_since = 0, time.perf_counter()
    bar = tqdm(
        total=cfg.max_steps,
        initial=run.step,
        disable=not (progress and main),
        unit="step",
        dynamic_ncols=True,
    )
    log = open(metrics_path, "a", encoding="utf-8") if main else None
    model.train()
    try:
        with _StopSignal() as stop:
            while run.step < cfg.max_steps:
                lr = get_lr(run.step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_loss, step_metrics = 0.0, {}
                for micro in range(cfg.grad_accum):
                    batch = to_device(
                        train_data.batch(run.data_step, micro, info.rank, info.world), device
                    )
                    sync = micro == cfg.grad_accum - 1 or info.strategy != "ddp"
                    with contextlib.nullcontext() if sync else wrapped.no_sync():
                        with _autocast(device, amp):
                            out = objective(step_fn, batch)
                        (out.loss / cfg.grad_accum).backward()
                    step_loss += float(out.loss.detach()) / cfg.grad_accum
                    for k, v in out.metrics.items():
                        step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum
                    tokens_since += int(batch["input_ids"].numel()) * info.world
                grad_norm = _grad_norm(params, cfg.grad_clip)
                bad = D.any_rank(not (math.isfinite(step_loss) and math.isfinite(grad_norm)), info)
                run.data_step += 1
                if bad:
                    optimizer.zero_grad(set_to_none=True)
                    consecutive_skips += 1
                    what = f"loss {step_loss} / gradient norm {grad_norm}"
                    if cfg.nonfinite == "halt" or consecutive_skips >= cfg.max_skips:
                        raise TrainingError(
                            f"non-finite {what} at step {run.step + 1} (batch {run.data_step - 1}), "
                            f"{consecutive_skips} time(s) in a row; lower lr or check that batch of the data."
                        )
                    if log is not None:
                        log.write(
                            json.dumps(
                                {
                                    "step": run.step,
                                    "skipped_batch": run.data_step - 1,
                                    "reason": what,
                                }
                            )
                            + "\n"
                        )
                    continue
                consecutive_skips = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                run.step += 1
                done = run.step
                last_loss = D.all_mean(step_loss, info)
                bar.update(1)

                record: dict[str, Any] | None = None
                if done % cfg.log_every == 0 or done == cfg.max_steps:
                    elapsed = time.perf_counter() - t_since
                    record = {
                        "step": done,
                        "loss": last_loss,
                        "lr": lr,
                        "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                        "grad_norm": grad_norm,
                        "peak_mem_mb": peak_memory_mb(device),
                        **{k: D.all_mean(v, info) for k, v in step_metrics.items()},
                    }
                    tokens_since, t_since = 0, time.perf_counter()
                    bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                is_eval = eval_data is not None and (
                    done % cfg.eval_every == 0 or done == cfg.max_steps
                )
                if is_eval:
                    ev = evaluate_loss(model, objective, eval_data(), device, amp)
                    record = {**(record or {"step": done, "loss": last_loss, "lr": lr}), **ev}
                    score = _select(ev, cfg)
                    if run.best is None or (
                        score < run.best if cfg.select_mode == "min" else score > run.best
                    ):
                        run.best, run.best_loss, bad_evals = score, ev["eval_loss"], 0
                        run.export_best()
                    else:
                        bad_evals += 1
                    bar.set_postfix(loss=f"{last_loss:.3f}", eval=f"{ev['eval_loss']:.3f}")
                if record is not None and log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if record is not None and on_log is not None:
                    on_log(record)
                if is_eval or done % (cfg.save_every or cfg.eval_every) == 0:
                    run.checkpoint()
                if is_eval:
                    if main:
                        plot_losses(metrics_path, out_dir / "loss.png")
                    t_since = time.perf_counter()  # tokens/s measures training, not evaluation
                    if cfg.patience is not None and bad_evals >= cfg.patience:
                        stopped_early = True
                        break
                if D.any_rank(stop.received is not None, info):
                    if run.saved_at != run.step:
                        run.checkpoint()
                    return TrainResult(
                        out_dir, run.step, last_loss, run.best_loss, interrupted=True,
                        best_score=run.best,
                    )  # fmt: skip
        if eval_data is None:
            run.export_best()
        if run.saved_at != run.step:
            run.checkpoint()
        if main:
            plot_losses(metrics_path, out_dir / "loss.png")
        return TrainResult(
            out_dir, run.step, last_loss, run.best_loss, stopped_early=stopped_early,
            best_score=run.best,
        )  # fmt: skip
    finally:
        bar.close()
        if log is not None:
            log.close()
