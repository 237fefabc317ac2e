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


class StopAt(L.Callback):
    """Stops training after batch ``batch`` of ``epoch`` the way a first Ctrl-C or a SIGTERM does: Lightning raises
    at the batch boundary, ``checkpoints/last.ckpt`` is saved mid-epoch and ``fit`` raises ``TrainingInterrupted``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer._signal_connector.received_sigterm = True  # what GracefulStop's Ctrl-C handler sets
