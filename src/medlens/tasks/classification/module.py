"""The classification LightningModules (binary, multiclass, multilabel) on the shared base."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medlens.engine.module import TaskModule
from medlens.tasks.classification.metrics import classification_metrics, threshold_sweep


class ClassificationModule(TaskModule):
    """Sigmoid outputs, masked unknown labels; metrics over the whole validation set each epoch."""

    def compute_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        # per-epoch validation: an early epoch near chance is no news; the final evaluation warns about AUROC < 0.5
        return classification_metrics(probs, targets, self.label_space.task, self.label_space.names, warn=False)


class BinaryModule(ClassificationModule):
    """One logit for the positive class (label_names[1])."""

    def task_targets(self, targets, mask):
        return targets[:, 1:2], mask[:, 1:2]

    def compute_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Also this epoch's validation operating points: ``threshold_f1`` (max F1) and ``threshold_youden``."""
        out = super().compute_metrics(probs, targets)
        y = targets[:, 1]
        known = ~np.isnan(y)
        sw = threshold_sweep(probs[known, 0], y[known])
        for key, point in (("threshold_f1", "max_f1"), ("threshold_youden", "youden")):
            if sw[point] is not None:
                out[key] = float(sw[point]["threshold"])
        return out


class MulticlassModule(ClassificationModule):
    """Softmax over classes; rows with an unknown class are masked."""

    def task_targets(self, targets, mask):
        return targets, mask.all(dim=1)

    def activation(self, logits):
        return torch.softmax(logits, dim=1)


class MultilabelModule(ClassificationModule):
    """One sigmoid per label; unknown labels are masked out of the loss."""


#: label kind -> module class
MODULES: dict[str, type[ClassificationModule]] = {
    "binary": BinaryModule, "multiclass": MulticlassModule, "multilabel": MultilabelModule,
}
