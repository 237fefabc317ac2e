"""The regression task's torch code: the masked loss on standardised targets, the LightningModule and the inference
head (imported only where a network is trained or built; the ONNX runtime never needs it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medlens.engine.module import TaskModule
from medlens.tasks.regression.metrics import point_metrics


class RegressionLoss(nn.Module):
    """MSE, L1 or Huber between the output and the standardised target, over known targets only.

    Args:
        name: ``mse``, ``l1`` or ``huber``.
        mean, sd: the training targets' mean and standard deviation (targets are learnt as (y - mean) / sd).
        delta: Huber's transition point, in standard deviations.
    """

    def __init__(self, name: str, mean: float, sd: float, delta: float = 1.0) -> None:
        super().__init__()
        self.name, self.mean, self.sd, self.delta = name, float(mean), float(sd), float(delta)

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.sd

    def forward(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        if not mask.any():
            return output.sum() * 0.0  # no known target in the batch: no gradient, no NaN
        o = output.float()[mask]
        t = torch.where(mask, target, torch.zeros_like(target)).float()[mask]
        if self.name == "mse":
            return F.mse_loss(o, t)
        if self.name == "l1":
            return F.l1_loss(o, t)
        return F.huber_loss(o, t, delta=self.delta)


class RegressionModule(TaskModule):
    """One output: the standardised value; validation metrics in the target's own units."""

    task = "regression"

    def task_targets(self, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss_fn.standardize(targets), mask

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.loss_fn.sd + self.loss_fn.mean

    def compute_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        return {k: v for k, v in point_metrics(probs[:, 0], targets[:, 0]).items() if k in ("mae", "rmse", "r2", "pearson_r", "bias")}


class RegressionHead(nn.Module):
    """``(image, metadata) -> the network's output``, the graph the predictors run and ONNX exports."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, metadata=None):
        return self.model(image, None)
