"""A crash (power loss, OOM kill, kill -9) at the start of an epoch, after the previous epoch's checkpoint."""

from __future__ import annotations

import lightning as L


class CrashAt(L.Callback):
    """Raises at the start of ``epoch``, after the previous epoch's checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")
