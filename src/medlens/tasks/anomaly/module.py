"""The reconstruction LightningModule: autoencoders trained on normal images only."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from medlens.data.dataset import Batch
from medlens.data.labels import LabelSpace
from medlens.engine.module import OptimSettings, TaskModule
from medlens.models.autoencoder import ScoreSpec, error_map, scores_from_error_maps
from medlens.tasks.classification.metrics import classification_metrics

log = logging.getLogger("medlens.anomaly")


class ReconstructionModule(TaskModule):
    """Reconstruction training on normal images; validation reports the normal-image loss and the score's AUROC.

    Args:
        model: an autoencoder (``forward(x) -> reconstruction``).
        label_space: ``(normal, abnormal)``, task ``anomaly``.
        loss: a :class:`ReconstructionLoss`.
        optim: optimiser settings (EMA and mixup/cutmix do not apply and are switched off).
        monitor_metric: the validation metric checkpoints follow (``loss``).
        seed: per-epoch seeding.
        score: how validation images are scored (for the logged AUROC).
    """

    def __init__(
        self, model: nn.Module, label_space: LabelSpace, loss: nn.Module, optim: OptimSettings,
        monitor_metric: str = "loss", seed: int = 0, score: ScoreSpec | None = None,
    ) -> None:
        if optim.ema or optim.mixup_alpha > 0 or optim.cutmix_alpha > 0:
            log.warning("anomaly task: EMA, mixup and cutmix do not apply to reconstruction training; ignored")
            optim = dataclasses.replace(optim, ema=False, mixup_alpha=0.0, cutmix_alpha=0.0)
        super().__init__(model, label_space, loss, optim, monitor_metric, seed)
        self.score_spec = score or ScoreSpec()
        self.train_rows_seen = 0  # images that went through training_step (all of them normal)

    def forward(self, images: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(images)

    @staticmethod
    def check_normal(batch: Batch) -> None:
        """Raise if any row of a training batch is not labelled normal (column 0 of the anomaly targets)."""
        normal = batch.targets[:, 0] == 1
        if not bool(normal.all()):
            bad = batch.index[~normal].tolist()
            raise RuntimeError(f"anomaly training: {len(bad)} non-normal samples reached the training loader (rows {bad[:5]})")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None
        self.check_normal(batch)
        self.train_rows_seen += len(batch)
        loss = self.loss_fn(self.model(batch.images), batch.images)
        self.record_train_loss(loss, len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": [], "scores": [], "targets": []}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch is None:
            return
        x = batch.images
        recon = self.model(x)
        self._val["loss"].append(self.loss_fn.per_sample(recon, x).detach())
        self._val["scores"].append(scores_from_error_maps(error_map(x, recon, self.score_spec), self.score_spec).detach())
        self._val["targets"].append(batch.targets.detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("loss"):
            return
        loss = self._gather(self._val["loss"])
        scores = self._gather(self._val["scores"])
        targets = self._gather(self._val["targets"])
        normal = targets[:, 0] == 1
        logs = {"val/loss": float(loss[normal].mean()) if normal.any() else float(loss.mean()), "val/loss_all": float(loss.mean())}
        if normal.any() and (targets[:, 1] == 1).any():  # information only: model selection never sees abnormal images
            m = classification_metrics(scores[:, None], targets, "binary", self.label_space.names, calibration=False, warn=False)
            for k in ("auroc_macro", "average_precision_macro"):
                if m.get(k) is not None:
                    logs[f"val/{k.removesuffix('_macro')}"] = float(m[k])
        self.log_dict(logs, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.history.append(self.history_row(logs))

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        maps = error_map(batch.images, self.model(batch.images), self.score_spec)
        return {"probs": scores_from_error_maps(maps, self.score_spec)[:, None], "index": batch.index}

    def configure_optimizers(self):
        out = super().configure_optimizers()
        if self.optim.scheduler == "plateau":  # the reconstruction loss goes down: plateau on a minimum
            opt = out["optimizer"]
            o = self.optim
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=o.gamma if o.gamma < 1 else 0.1, patience=o.plateau_patience)
            out = {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        return out
