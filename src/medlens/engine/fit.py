"""One ``fit`` for every task: loaders, Trainer, callbacks, distributed epoch order, best-weights reload.

The task supplies the LightningModule; this module runs it and hands back the best weights (raw or EMA,
whichever validated better at the best epoch) with the per-epoch history. Checkpoints are read with
``torch.load(weights_only=True)`` (:mod:`medlens.engine.checkpoint`), and a resume checkpoint is read exactly
once: the object checked is the object Lightning restores, so a crafted or swapped ``last.ckpt`` cannot run code.
A SIGTERM or Ctrl-C during training saves ``checkpoints/last.ckpt`` and raises
:class:`~medlens.engine.signals.TrainingInterrupted` (exit 143 / 130 in the CLI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medlens.engine.checkpoint import (
    COMPILE_PREFIX,
    CheckpointError,
    ResumeCheckpoint,
    check_resume_checkpoint,
    load_checkpoint,
    read_resume,
)

log = logging.getLogger("medlens.train")

__all__ = ["COMPILE_PREFIX", "CheckpointError", "FitResult", "ResumeCheckpoint", "check_resume_checkpoint", "clean_state_dict",
           "fit", "load_checkpoint", "read_resume"]


@dataclass
class FitResult:
    """What :func:`fit` produced (on every process; ``state_dict`` only on global rank zero)."""

    is_global_zero: bool
    state_dict: dict[str, torch.Tensor] | None
    weights_source: str = "raw"
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None
    train_time_s: float = 0.0
    loggers: list = field(default_factory=list)


def clean_state_dict(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with the prefix and torch.compile's wrapper name removed."""
    return {k.removeprefix(prefix).replace(COMPILE_PREFIX, ""): v for k, v in sd.items() if k.startswith(prefix)}


def fit(cfg: Any, module: Any, train_loader: Any, val_loader: Any, run_dir: Path, monitor: tuple[str, str],
        resume: str | os.PathLike[str] | ResumeCheckpoint | None = None, callbacks: list | None = None,
        epoch_line: Callable[[dict[str, Any]], str] | None = None) -> FitResult:
    """Train ``module`` with the run's Trainer and return the best weights of its ``model``.

    Args:
        cfg: the run config (trainer, optim, tracking sections).
        module: the task's LightningModule (``module.model`` is the network; ``module.history`` its epochs).
        train_loader: the training DataLoader.
        val_loader: the validation DataLoader.
        run_dir: the run folder (checkpoints, logs).
        monitor: (validation metric without ``val/``, ``min``/``max``) that checkpoints follow.
        resume: a checkpoint to continue from: a path, or better the :class:`ResumeCheckpoint` that
            :func:`read_resume` returned before data and model were built. It is checked against ``module``
            (:func:`check_resume_checkpoint`) and that same object is what Lightning restores.
        callbacks: extra Lightning callbacks.
        epoch_line: the task's part of the per-epoch console line (``Task.epoch_line``).

    Raises:
        CheckpointError: the resume checkpoint is unreadable, unsafe or of another network.
        TrainingInterrupted: SIGTERM or Ctrl-C stopped the run (``checkpoints/last.ckpt`` saved first).

    Example:
        >>> res = fit(cfg, module, train_loader, val_loader, run_dir, ("auroc_macro", "max"))  # doctest: +SKIP
    """
    from medlens.engine.callbacks import (
        AtomicCheckpointIO,
        EpochSummary,
        GracefulStop,
        LoaderProgress,
        TrainClock,
    )
    from medlens.engine.distributed import DistributedEpochOrder
    from medlens.engine.tracking import RunRecorder, build_loggers
    from medlens.engine.trainer import build_trainer

    ck = check_resume_checkpoint(resume, module) if resume is not None else None
    resume_path = None if ck is None else ck.path
    # (loader workers need no warning: each draw's augmentation is seeded from (seed, epoch, position) by
    # medlens.data.dataset.EpochSampler, so fresh workers after a resume draw what the old ones would have)
    if cfg.trainer.tune_allocator:
        from medlens.engine.allocator import tune_allocator

        tune_allocator()
    if cfg.trainer.compile:
        module.model = torch.compile(module.model)
    loggers = build_loggers(cfg, run_dir, resume_path)
    stop = GracefulStop(Path(run_dir) / "checkpoints" / "last.ckpt")
    clock = TrainClock()  # train_time_s of a resumed run counts its earlier sessions too
    trainer, ckpt_cb = build_trainer(cfg, run_dir, monitor, loggers, [RunRecorder(cfg, run_dir, resume_path), DistributedEpochOrder(),
                                                                EpochSummary(cfg.trainer.max_epochs, epoch_line),
                                                                LoaderProgress(), stop, clock, *(callbacks or [])],
                                     checkpoint_io=AtomicCheckpointIO(ck))
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume_path, weights_only=True)
    except SystemExit:  # Lightning's SIGTERMException (code 0!), or its sys.exit(1) after a second Ctrl-C
        interrupted = stop.interrupted()
        if interrupted is None:
            raise
        raise interrupted from None
    if trainer.received_sigterm and stop.signal_name is None:  # SIGTERM while the last epoch was closing
        stop.signal_name = "SIGTERM"
    if (interrupted := stop.interrupted()) is not None:  # the final epoch's last.ckpt is the checkpoint
        raise interrupted
    train_time = clock.total_s()
    if not trainer.is_global_zero:  # DDP: rank 0 alone evaluates (whole val/test sets) and writes the bundle
        return FitResult(False, None, history=list(module.history), train_time_s=train_time, loggers=loggers)

    best = ckpt_cb.best_model_path or str(Path(run_dir) / "checkpoints" / "last.ckpt")
    weights_source = "raw"
    history = list(module.history)
    if best and Path(best).is_file():
        best_ck = load_checkpoint(best)
        sd = clean_state_dict(best_ck["state_dict"], "model.")
        epoch = int(best_ck.get("epoch", 0))
        if getattr(cfg.optim, "ema", False) and best_ck.get("medlens_ema_better", {}).get(epoch) and "medlens_ema_state" in best_ck:
            sd = clean_state_dict(best_ck["medlens_ema_state"])
            weights_source = "ema"
        saved = list(best_ck.get("medlens_history", []))
        history = history if len(history) >= len(saved) else saved
    else:
        best = None
        sd = clean_state_dict(module.model.state_dict())
    return FitResult(True, sd, weights_source, history, best, train_time, loggers)
