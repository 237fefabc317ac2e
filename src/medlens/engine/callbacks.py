"""Callbacks and plugins: backbone freezing, atomic checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class FreezeBackbone(L.Callback):
    """Freeze the backbone for the first ``epochs`` epochs (or for the whole run when ``epochs`` is None).

    Frozen parameters get ``requires_grad=False`` and the backbone's normalisation layers stay in eval mode,
    so their running statistics are not disturbed while only the head learns.
    """

    def __init__(self, epochs: int | None) -> None:
        self.epochs = epochs

    def _frozen(self, epoch: int) -> bool:
        return self.epochs is None or epoch < self.epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self._frozen(trainer.current_epoch)
        backbone = pl_module.model.backbone
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            backbone.eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the same folder, then rename: a run killed at any moment
    leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # Run checkpoints are written by medlens itself (trusted); bundles never use pickle.
        return torch.load(str(path), map_location=map_location or "cpu", weights_only=False)
