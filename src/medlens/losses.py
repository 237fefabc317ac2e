"""Losses with masks for unknown labels, class weights, and a string registry.

Every loss takes ``(logits, targets, mask)``:
* binary / multilabel: logits and targets (B, K), mask (B, K) bool; unknown entries contribute nothing (no
  gradient, not counted in the mean).
* multiclass: logits (B, K), targets (B, K) one-hot or soft (mixup), mask (B,) for rows with a known class.

``create_loss(name, **kw)`` and ``list_losses()``; ``class_weights_from_counts`` turns positive counts into
weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medlens.registry import Registry

LOSSES: Registry = Registry("loss")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def class_weights_from_counts(positives, total: int | None = None, task: str = "multilabel") -> torch.Tensor:
    """Weights from positive counts.

    * multilabel/binary: ``pos_weight = negatives / positives`` per label (BCE's ``pos_weight``).
    * multiclass: ``total / (K * count_k)`` per class (balanced weights), normalised to mean 1.
    Labels with no positives get weight 1.
    """
    pos = torch.as_tensor(positives, dtype=torch.float32)
    if task == "multiclass":
        k = len(pos)
        n = float(total if total is not None else pos.sum())
        w = torch.where(pos > 0, n / (k * pos.clamp_min(1)), torch.ones_like(pos))
        return w / w.mean()
    if total is None:
        raise ValueError("total is needed for binary/multilabel weights")
    neg = float(total) - pos
    return torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos))


class MaskedBCE(nn.Module):
    """Binary cross-entropy on logits, masked, with optional per-label ``pos_weight``."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = torch.nan_to_num(targets, nan=0.0)
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none", pos_weight=self.pos_weight)
        return _masked_mean(loss, mask)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017), masked, with optional alpha and per-label weights.

    ``FL = -w * alpha_t * (1 - p_t)**gamma * log(p_t)``, averaged over known entries.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = torch.nan_to_num(targets, nan=0.0)
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
        if self.weight is not None:
            loss = loss * self.weight
        return _masked_mean(loss, mask)


class SoftCrossEntropy(nn.Module):
    """Cross-entropy with one-hot or soft targets, label smoothing and class weights; rows masked."""

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = torch.nan_to_num(targets, nan=0.0)
        k = logits.shape[1]
        if self.label_smoothing > 0:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / k
        logp = F.log_softmax(logits, dim=1)
        w = self.weight if self.weight is not None else torch.ones(k, device=logits.device, dtype=logits.dtype)
        per_row = -(t * logp * w).sum(dim=1)
        if mask.ndim > 1:
            mask = mask.all(dim=1)
        return _masked_mean(per_row, mask)


class MulticlassFocal(nn.Module):
    """Softmax focal loss for multiclass targets (soft targets allowed); rows masked."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = torch.nan_to_num(targets, nan=0.0)
        logp = F.log_softmax(logits, dim=1)
        p = logp.exp()
        w = self.weight if self.weight is not None else 1.0
        per_row = -(t * (1 - p).pow(self.gamma) * logp * w).sum(dim=1)
        if mask.ndim > 1:
            mask = mask.all(dim=1)
        return _masked_mean(per_row, mask)


@LOSSES.register("bce")
def _bce(task: str, pos_weight=None, **_) -> nn.Module:
    return MaskedBCE(pos_weight)


@LOSSES.register("focal")
def _focal(task: str, gamma: float = 2.0, alpha: float | None = None, weight=None, **_) -> nn.Module:
    if task == "multiclass":
        return MulticlassFocal(gamma, weight)
    return FocalLoss(gamma, alpha, weight)


@LOSSES.register("ce")
def _ce(task: str, label_smoothing: float = 0.0, weight=None, **_) -> nn.Module:
    if task != "multiclass":
        raise ValueError(f"loss 'ce' is for multiclass tasks; use 'bce' or 'focal' for {task}")
    return SoftCrossEntropy(label_smoothing, weight)


def create_loss(name: str, task: str, **kw) -> nn.Module:
    """Build a loss by name; ``auto`` is ``ce`` for multiclass and ``bce`` otherwise.

    Example:
        >>> loss = create_loss("focal", "multilabel", gamma=2.0)
    """
    if name == "auto":
        name = "ce" if task == "multiclass" else "bce"
    return LOSSES.create(name, task, **kw)


def list_losses() -> list[str]:
    return LOSSES.names()
