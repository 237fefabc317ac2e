"""Callbacks and plugins: backbone freezing, atomic checkpoints."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medlens._atomic import chmod_as_created

log = logging.getLogger("medlens.train")


class FreezeBackbone(L.Callback):
    """Freeze the backbone for the first ``epochs`` epochs (or for the whole run when ``epochs`` is None).

    Frozen parameters get ``requires_grad=False`` and the backbone's normalisation layers stay in eval mode,
    so their running statistics are not disturbed while only the head learns. At epoch ``epochs`` (0-based)
    everything trains again; the optimiser already holds the backbone's parameters (with ``backbone_lr``), so
    nothing is rebuilt and a resumed run freezes or unfreezes by the epoch it resumes at.

    Example:
        >>> cb = FreezeBackbone(epochs=2)
        >>> [cb.frozen(e) for e in range(4)]
        [True, True, False, False]
    """

    def __init__(self, epochs: int | None) -> None:
        self.epochs = epochs

    def frozen(self, epoch: int) -> bool:
        """Whether the backbone is frozen during ``epoch`` (0-based)."""
        return self.epochs is None or epoch < self.epochs

    _frozen = frozen  # older name

    @staticmethod
    def _backbone(pl_module: L.LightningModule):
        model = pl_module.model
        return getattr(model, "_orig_mod", model).backbone  # torch.compile wraps the network

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self.frozen(trainer.current_epoch)
        backbone = self._backbone(pl_module)
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        # Lightning restores each submodule's own mode after validation, so unfreezing must switch it back.
        backbone.train(not frozen)
        if self.epochs and trainer.current_epoch == self.epochs:
            log.info("epoch %d: backbone unfrozen", trainer.current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # Lightning puts the whole module back in train mode after every validation run (also mid-epoch).
        if self.frozen(trainer.current_epoch):
            backbone = self._backbone(pl_module)
            if backbone.training:
                backbone.eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the same folder, then rename: a run killed at any moment
    leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            chmod_as_created(tmp)  # mkstemp makes 0600: the user's umask decides, as for any file
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old or the new file, never half
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # Run checkpoints are written by medlens itself (trusted); bundles never use pickle.
        return torch.load(str(path), map_location=map_location or "cpu", weights_only=False)
