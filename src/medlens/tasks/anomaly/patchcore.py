"""The feature detector's LightningModule: one pass over the training normals fills the memory bank.

Runs through the same engine as every model (``engine.fit``: checkpoints, resume, tracking, progress): the one
training epoch collects patch features of normal images (no optimiser, nothing learned by gradient); before
validation the memory is thinned by the coreset and set, so the checkpoint and the bundle carry it. Validation
logs ``val/loss`` = the mean anomaly score of the validation normals (what checkpoints follow) and, for
information only, the AUROC.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from medlens.data.dataset import Batch
from medlens.data.labels import LabelSpace
from medlens.engine.module import OptimSettings
from medlens.models.autoencoder import ScoreSpec, error_map, scores_from_error_maps
from medlens.models.patchcore import PatchReservoir
from medlens.tasks.anomaly.module import ReconstructionModule

log = logging.getLogger(__name__)


class PatchCoreModule(ReconstructionModule):
    """Fill a :class:`~medlens.models.patchcore.PatchCoreDetector`'s memory from normal training images.

    Args:
        model: the detector (frozen backbone, empty memory).
        label_space: ``(normal, abnormal)``.
        loss: unused by the memory fill (kept for the module interface).
        optim: unused (no optimiser).
        monitor_metric: ``loss`` (mean score of validation normals).
        seed: coreset seed (and the candidate sample's).
        score: the score settings (error map ``distance``).
        coreset_candidates: most patch rows kept for the coreset (a uniform random sample of every training
            patch): bounds the fill's memory at ``coreset_candidates * feature_dim * 4`` bytes.
    """

    def __init__(self, model: nn.Module, label_space: LabelSpace, loss: nn.Module, optim: OptimSettings,
                 monitor_metric: str = "loss", seed: int = 0, score: ScoreSpec | None = None, coreset_candidates: int = 262144) -> None:
        super().__init__(model, label_space, loss, optim, monitor_metric, seed, score)
        self.automatic_optimization = False  # nothing is learned by gradient: the memory is filled
        self.coreset_candidates = int(coreset_candidates)
        self.pending: PatchReservoir | None = None

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        if batch is None:
            return None
        self.check_normal(batch)
        self.train_rows_seen += len(batch)
        # float32 features, as at inference (Predictor, ONNX): a bf16/fp16 memory would put every normal patch off by rounding
        with torch.no_grad(), torch.autocast(device_type=batch.images.device.type, enabled=False):
            feats = self.model.patch_features(batch.images.float())
        if self.pending is None:
            self.pending = PatchReservoir(self.coreset_candidates, seed=self.seed)
        self.pending.add(self.model.flat_patches(feats))
        return None

    def build_memory(self) -> None:
        """Coreset-thin the collected features into the memory (once per epoch that collected any)."""
        if self.pending is not None and self.pending.seen:
            if self.pending.seen > self.coreset_candidates:
                log.info("patchcore: %d of %d training patches sampled for the coreset (task_options.coreset_candidates)",
                         self.coreset_candidates, self.pending.seen)
            self.model.fill_memory(self.pending, seed=self.seed)
        self.pending = None

    def on_validation_epoch_start(self) -> None:
        self.build_memory()  # Lightning validates before on_train_epoch_end: the memory must be there already
        super().on_validation_epoch_start()

    def on_train_epoch_end(self) -> None:
        self.build_memory()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch is None:
            return
        x = batch.images.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            scores = scores_from_error_maps(error_map(x, self.model(x), self.score_spec), self.score_spec).detach()
        self._val["loss"].append(scores)  # checkpoints follow the normal images' mean score (lower: tighter fit)
        self._val["scores"].append(scores)
        self._val["targets"].append(batch.targets.detach())

    def configure_optimizers(self):
        return None
