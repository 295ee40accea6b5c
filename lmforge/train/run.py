"""The state of one `fit` call: model, optimizer, counters, and the collective saves that read
and write it (checkpoints, the best model, resume)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge.config.train import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.models.io import save_weights
from lmforge.train import distributed as D
from lmforge.train.checkpoint import (
    latest_checkpoint,
    prune,
    read_checkpoint,
    save_checkpoint,
    step_dir,
    tied_names,
)


class TrainingError(LmforgeError):
    """Training cannot go on (for example, the loss became NaN)."""


class Run:
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
        self.skips = 0  # bad steps in a row (see `settle`)
        self.bad_evals = 0  # evaluations in a row without improvement (see `patience`)
        self.run_id = uuid.uuid4().hex  # checkpoints carry it; pruning touches only this run's
        self.scaler: torch.amp.GradScaler = torch.amp.GradScaler("cpu", enabled=False)
        # set by _start: where and how the steps run
        self.device = torch.device("cpu")
        self.amp: torch.dtype | None = None
        self.wrapped: torch.nn.Module = model  # the DDP wrapper or the (sharded) model
        self.step_fn: Callable[..., Any] = model  # `wrapped`, compiled with cfg.compile
        self.params: list[torch.Tensor] = []
        self.fold_clip = False  # clip inside fused AdamW's kernel (`clip_scale`)

    def unwrap(self) -> None:
        """Drop the DDP wrapper (and its compiled form) while the process group still lives.

        An exception leaving `fit` keeps this run alive in its traceback; a DDP reducer freed
        only after the group is destroyed can hang that rank on exit."""
        self.wrapped = self.step_fn = self.model

    def checkpoint(self) -> None:
        """Save a full checkpoint (collective: every rank takes part, rank 0 writes)."""
        model_state = D.full_model_state(self.model)
        optim_state = D.full_optimizer_state(self.model, self.optimizer)
        rngs = gather_rng(self.info)
        if self.info.is_main:
            state = {
                "step": self.step,
                "data_step": self.data_step,
                "best_eval_loss": self.best_loss,
                "best_score": self.best,
                "run_id": self.run_id,
                "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
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
            prune(self.ckpt_root, self.cfg.keep_last, self.run_id)
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
        self.run_id = ck.state.get("run_id", self.run_id)
        if self.scaler.is_enabled() and ck.state.get("grad_scaler"):
            self.scaler.load_state_dict(ck.state["grad_scaler"])
        return True


def select_score(ev: dict[str, float], cfg: TrainConfig) -> float:
    """The number that ranks evaluations: ev[cfg.select_metric]."""
    if cfg.select_metric not in ev:
        raise TrainingError(
            f"select_metric '{cfg.select_metric}' is not among the evaluation's numbers "
            f"({', '.join(sorted(ev))}); pick one of them."
        )
    return ev[cfg.select_metric]


def gather_rng(info: D.DistInfo) -> list[torch.Tensor]:
    """Every rank's CPU random state (on the GPU for the trip through NCCL)."""
    return D.all_gather_cpu(torch.get_rng_state(), info)
