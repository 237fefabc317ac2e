"""One ``fit`` for every task: loaders, Trainer, callbacks, distributed epoch order, best-weights reload.

The task supplies the LightningModule; this module runs it and hands back the best weights (raw or EMA,
whichever validated better at the best epoch) with the per-epoch history. Checkpoints are read with
``torch.load(weights_only=True)``: a crafted ``last.ckpt`` cannot run code.
"""

from __future__ import annotations

import logging
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("medlens.train")

#: torch.compile wraps the network; its state-dict keys carry this prefix
COMPILE_PREFIX = "_orig_mod."


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign, or would need code execution to load."""


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without executing code (``weights_only=True``).

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, or holding objects other than plain data
            (which is how a crafted checkpoint would run code).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint is empty")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p}: refused: the checkpoint holds objects that only arbitrary code could rebuild "
                              f"({str(e).splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupt: {type(e).__name__})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        raise CheckpointError(f"{p}: not a medlens/Lightning checkpoint (no state_dict)")
    return ck


def check_resume_checkpoint(path: str | Path, module: nn.Module) -> None:
    """Refuse a resume checkpoint that is unsafe, corrupt or of another network, before Lightning reads it."""
    ck = load_checkpoint(path)
    want = {k.replace(COMPILE_PREFIX, "") for k in module.state_dict()}
    have = {k.replace(COMPILE_PREFIX, "") for k in ck["state_dict"]}
    if want != have:
        missing = sorted(want - have)[:3]
        raise CheckpointError(f"{path}: this checkpoint belongs to another network (missing e.g. {missing}); "
                              "resume only from this run's checkpoints/last.ckpt")


def fit(cfg: Any, module: Any, train_loader: Any, val_loader: Any, run_dir: Path, monitor: tuple[str, str],
        resume: str | None = None, callbacks: list | None = None) -> FitResult:
    """Train ``module`` with the run's Trainer and return the best weights of its ``model``.

    Args:
        cfg: the run config (trainer, optim, tracking sections).
        module: the task's LightningModule (``module.model`` is the network; ``module.history`` its epochs).
        train_loader: the training DataLoader.
        val_loader: the validation DataLoader.
        run_dir: the run folder (checkpoints, logs).
        monitor: (validation metric without ``val/``, ``min``/``max``) that checkpoints follow.
        resume: a checkpoint to continue from (checked with :func:`check_resume_checkpoint` first).
        callbacks: extra Lightning callbacks.

    Example:
        >>> res = fit(cfg, module, train_loader, val_loader, run_dir, ("auroc_macro", "max"))  # doctest: +SKIP
    """
    from medlens.engine.callbacks import EpochSummary
    from medlens.engine.distributed import DistributedEpochOrder
    from medlens.engine.tracking import RunRecorder, build_loggers
    from medlens.engine.trainer import build_trainer

    if resume is not None:
        check_resume_checkpoint(resume, module)
    if cfg.trainer.tune_allocator:
        from medlens.engine.allocator import tune_allocator

        tune_allocator()
    if cfg.trainer.compile:
        module.model = torch.compile(module.model)
    loggers = build_loggers(cfg, run_dir, resume)
    trainer, ckpt_cb = build_trainer(cfg, run_dir, monitor, loggers, [RunRecorder(cfg, run_dir, resume), DistributedEpochOrder(),
                                                                EpochSummary(cfg.trainer.max_epochs, cfg.trainer.threshold_method, cfg.trainer.fixed_threshold),
                                                                *(callbacks or [])])
    t_fit = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    train_time = time.perf_counter() - t_fit
    if not trainer.is_global_zero:  # DDP: rank 0 alone evaluates (whole val/test sets) and writes the bundle
        return FitResult(False, None, history=list(module.history), train_time_s=train_time, loggers=loggers)

    best = ckpt_cb.best_model_path or str(Path(run_dir) / "checkpoints" / "last.ckpt")
    weights_source = "raw"
    history = list(module.history)
    if best and Path(best).is_file():
        ck = load_checkpoint(best)
        sd = clean_state_dict(ck["state_dict"], "model.")
        epoch = int(ck.get("epoch", 0))
        if getattr(cfg.optim, "ema", False) and ck.get("medlens_ema_better", {}).get(epoch) and "medlens_ema_state" in ck:
            sd = clean_state_dict(ck["medlens_ema_state"])
            weights_source = "ema"
        saved = list(ck.get("medlens_history", []))
        history = history if len(history) >= len(saved) else saved
    else:
        best = None
        sd = clean_state_dict(module.model.state_dict())
    return FitResult(True, sd, weights_source, history, best, train_time, loggers)
