"""Losses with masks for unknown labels, class weights, and a string registry.

Every loss takes ``(logits, targets, mask)``:

* binary / multilabel: logits and targets (B, K), mask (B, K) bool; unknown entries contribute nothing (no
  gradient, not counted in the mean). Targets may be soft (mixup/cutmix), in [0, 1].
* multiclass: logits (B, K), targets (B, K) one-hot or soft (mixup), mask (B,) for rows with a known class.

Class weights for binary/multilabel losses come in two shapes:

* ``(K,)``: one weight per label, scaling every known entry of that label (e.g. "errors on Mass count twice");
* ``(2, K)``: row 0 weighs negatives, row 1 positives (what :func:`class_weights_from_counts` returns), so
  each class of each label contributes as if the label were balanced.

Every option acts or is refused: ``focal`` composes ``alpha``, ``pos_weight``, class weights, label smoothing and
the unknown mask; ``bce`` takes ``pos_weight``, class weights and label smoothing; ``pos_weight`` and
``alpha`` on a loss that cannot use them (multiclass, or ``alpha`` without focal) raise a ``ValueError``
naming the ``optim`` key.

``create_loss(name, task, **kw)`` builds a loss by name (``list_losses()``); :func:`loss_kwargs` is the one
adapter from the ``optim`` config section and the training split's label counts to those keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens.registry import Registry

LOSSES: Registry = Registry("loss")

# (1 - p_t) ** gamma has an infinite derivative at 0 for gamma < 1; a tiny floor keeps gradients finite
# (unknown entries are multiplied by 0, and 0 * inf would be NaN).
_FOCAL_EPS = 1e-12


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` is True; 0 (with zero gradient) when nothing is known."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def _clean_targets(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NaN (unknown) -> 0 so arithmetic stays finite; those entries are masked out anyway."""
    return torch.where(mask, torch.nan_to_num(targets, nan=0.0), torch.zeros_like(targets))


def _apply_binary_weight(loss: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return loss
    if weight.ndim == 2:  # (2, K): negatives, positives; soft targets interpolate linearly
        return loss * (weight[0] * (1.0 - t) + weight[1] * t)
    return loss * weight


def smooth_binary_targets(t: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Label smoothing for sigmoid outputs: ``t * (1 - eps) + eps / 2`` (each label is a two-class problem).

    Example:
        >>> smooth_binary_targets(torch.tensor([1.0, 0.0]), 0.1).tolist()
        [0.949999988079071, 0.05000000074505806]
    """
    return t * (1.0 - label_smoothing) + label_smoothing / 2.0 if label_smoothing > 0 else t


def pos_weight_from_counts(positives: Sequence[float] | np.ndarray | torch.Tensor, known: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """BCE ``pos_weight`` per label: negatives / positives (1 for a label without positives).

    Args:
        positives: positive count per label.
        known: number of rows where the label is known (positives + negatives).

    Example:
        >>> pos_weight_from_counts([10, 50], [100, 100]).tolist()
        [9.0, 1.0]
    """
    pos = torch.as_tensor(np.asarray(positives, dtype=np.float32))
    n = torch.as_tensor(np.asarray(known, dtype=np.float32))
    return torch.where(pos > 0, (n - pos) / pos.clamp_min(1.0), torch.ones_like(pos))


def class_weights_from_counts(
    positives: Sequence[float] | np.ndarray | torch.Tensor,
    total: int | Sequence[float] | np.ndarray | None = None,
    task: str = "multilabel",
) -> torch.Tensor:
    """Class weights inversely proportional to class frequency ("balanced" weights).

    * multiclass: ``total / (K * count_k)`` per class, normalised to mean 1 (classes without samples: 1).
    * binary/multilabel: a (2, K) tensor; row 1 weighs positives ``n / (2 * pos)``, row 0 negatives
      ``n / (2 * neg)``, where ``n`` is the number of rows in which the label is known. A label whose positives
      or negatives are missing gets weight 1 for both.

    Args:
        positives: count per class (multiclass) or positive count per label.
        total: number of labelled rows: an int, or one count per label (labels known on different rows).
        task: ``binary``, ``multiclass`` or ``multilabel``.

    Example:
        >>> class_weights_from_counts([25], [100], "binary") * 3
        tensor([[2.],
                [6.]])
    """
    pos = torch.as_tensor(np.asarray(positives, dtype=np.float32))
    if task == "multiclass":
        k = len(pos)
        n = float(total if total is not None and np.ndim(total) == 0 else pos.sum())
        w = torch.where(pos > 0, n / (k * pos.clamp_min(1)), torch.ones_like(pos))
        return w / w.mean()
    if total is None:
        raise ValueError("total (rows with a known label) is needed for binary/multilabel class weights")
    n = torch.as_tensor(np.broadcast_to(np.asarray(total, dtype=np.float32), pos.shape).copy())
    neg = n - pos
    ok = (pos > 0) & (neg > 0)
    w_pos = torch.where(ok, n / (2 * pos.clamp_min(1)), torch.ones_like(pos))
    w_neg = torch.where(ok, n / (2 * neg.clamp_min(1)), torch.ones_like(pos))
    return torch.stack([w_neg, w_pos])


class MaskedBCE(nn.Module):
    """Binary cross-entropy on logits, masked, with optional ``pos_weight``, class weights and label smoothing.

    Label smoothing replaces known targets by ``t * (1 - eps) + eps / 2`` (:func:`smooth_binary_targets`).

    Example:
        >>> loss = MaskedBCE()
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([[1.0, float("nan")]]), torch.tensor([[True, False]]))), 4)
        0.6931
    """

    def __init__(self, pos_weight: torch.Tensor | None = None, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # bf16/fp16 autocast: the loss is computed in float32
        t = smooth_binary_targets(_clean_targets(targets.to(logits.dtype), mask), self.label_smoothing)
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none", pos_weight=self.pos_weight)
        return _masked_mean(_apply_binary_weight(loss, t, self.weight), mask)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017), masked, with alpha, ``pos_weight``, class weights and label smoothing.

    ``FL = w * alpha_t * (1 - p_t) ** gamma * CE``, averaged over known entries, where
    ``CE = -(pos_weight * t * log(p) + (1 - t) * log(1 - p))`` (BCE with ``pos_weight``: it weighs the positive
    term of each label), ``p_t = p * t + (1 - p) * (1 - t)``, ``alpha_t = alpha * t + (1 - alpha) * (1 - t)`` and
    ``w`` the class weight (``(K,)`` per label, or ``(2, K)`` negatives/positives as for :class:`MaskedBCE`).
    With label smoothing ``eps``, ``t`` is the smoothed target ``t * (1 - eps) + eps / 2`` throughout. For a hard
    target this is ``-w * alpha * pos_weight * (1 - p) ** gamma * log(p)`` (positive) or
    ``-w * (1 - alpha) * p ** gamma * log(1 - p)`` (negative).

    Example:
        >>> loss = FocalLoss(gamma=2.0, alpha=0.25)
        >>> round(float(loss(torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[True]]))), 5)
        0.04332
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = None,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = alpha
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        t = smooth_binary_targets(_clean_targets(targets.to(logits.dtype), mask), self.label_smoothing)
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none", pos_weight=self.pos_weight)
        p = torch.sigmoid(logits)
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t).clamp_min(_FOCAL_EPS).pow(self.gamma) if self.gamma > 0 else ce
        if self.alpha is not None:
            loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
        return _masked_mean(_apply_binary_weight(loss, t, self.weight), mask)


def _row_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask.all(dim=1) if mask.ndim > 1 else mask


class SoftCrossEntropy(nn.Module):
    """Cross-entropy with one-hot or soft targets, label smoothing and class weights; unknown rows masked.

    The mean is over known rows (class weights scale each row; they are not renormalised as in
    ``torch.nn.CrossEntropyLoss``, so the loss scale does not jump with the batch's class mix).

    Example:
        >>> loss = SoftCrossEntropy(label_smoothing=0.1)
        >>> round(float(loss(torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([True]))), 4)
        1.0986
    """

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        rows = _row_mask(mask)
        t = torch.where(rows[:, None], torch.nan_to_num(targets.to(logits.dtype), nan=0.0), torch.zeros_like(logits))
        k = logits.shape[1]
        if self.label_smoothing > 0:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / k
        logp = F.log_softmax(logits, dim=1)
        w = self.weight if self.weight is not None else 1.0
        per_row = -(t * logp * w).sum(dim=1)
        return _masked_mean(per_row, rows)


class MulticlassFocal(nn.Module):
    """Softmax focal loss for multiclass targets (soft targets allowed); unknown rows masked.

    Example:
        >>> loss = MulticlassFocal(gamma=0.0)
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([True]))), 4)
        0.6931
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        rows = _row_mask(mask)
        t = torch.where(rows[:, None], torch.nan_to_num(targets.to(logits.dtype), nan=0.0), torch.zeros_like(logits))
        if self.label_smoothing > 0:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
        logp = F.log_softmax(logits, dim=1)
        focal = (1 - logp.exp()).clamp_min(_FOCAL_EPS).pow(self.gamma) if self.gamma > 0 else 1.0
        w = self.weight if self.weight is not None else 1.0
        per_row = -(t * focal * logp * w).sum(dim=1)
        return _masked_mean(per_row, rows)


def _refuse_multiclass_pos_weight(name: str, pos_weight: torch.Tensor | None) -> None:
    if pos_weight is not None:
        raise ValueError(
            f"task_options.pos_weight weighs the positive term of a sigmoid loss and cannot act on multiclass loss {name!r}; "
            "use task_options.class_weights for multiclass tasks"
        )


def _refuse_alpha(name: str, alpha: float | None) -> None:
    if alpha is not None:
        raise ValueError(f"task_options.focal_alpha acts only with task_options.loss: focal (the loss is {name!r}); remove it or use the focal loss")


@LOSSES.register("bce")
def _bce(
    task: str,
    pos_weight: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    alpha: float | None = None,
    **_: Any,
) -> nn.Module:
    if task == "multiclass":
        raise ValueError("loss 'bce' is for binary/multilabel tasks; use 'ce' or 'focal' for multiclass")
    _refuse_alpha("bce", alpha)
    return MaskedBCE(pos_weight, weight, label_smoothing)


@LOSSES.register("focal")
def _focal(
    task: str,
    gamma: float = 2.0,
    alpha: float | None = None,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    pos_weight: torch.Tensor | None = None,
    **_: Any,
) -> nn.Module:
    if task == "multiclass":
        _refuse_multiclass_pos_weight("focal", pos_weight)
        if alpha is not None:
            raise ValueError("task_options.focal_alpha balances the two classes of a sigmoid focal loss; for multiclass use task_options.class_weights")
        return MulticlassFocal(gamma, weight, label_smoothing)
    return FocalLoss(gamma, alpha, weight, pos_weight, label_smoothing)


@LOSSES.register("ce")
def _ce(
    task: str,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    alpha: float | None = None,
    **_: Any,
) -> nn.Module:
    if task != "multiclass":
        raise ValueError(f"loss 'ce' is for multiclass tasks; use 'bce' or 'focal' for {task}")
    _refuse_alpha("ce", alpha)
    _refuse_multiclass_pos_weight("ce", pos_weight)
    return SoftCrossEntropy(label_smoothing, weight)


def create_loss(name: str, task: str, **kw: Any) -> nn.Module:
    """Build a loss by name; ``auto`` is ``ce`` for multiclass and ``bce`` otherwise.

    Args:
        name: a registered loss (``bce``, ``focal``, ``ce``) or ``auto``.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        **kw: ``pos_weight``, ``weight``, ``gamma``, ``alpha``, ``label_smoothing`` (each loss takes what it uses).

    Example:
        >>> loss = create_loss("focal", "multilabel", gamma=2.0)
    """
    if name == "auto":
        name = "ce" if task == "multiclass" else "bce"
    return LOSSES.create(name, task, **kw)


def list_losses() -> list[str]:
    """Names of the registered losses."""
    return LOSSES.names()


def loss_kwargs(options: Any, task: str, positives: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    """Keyword arguments for :func:`create_loss` from classification's options and training-split counts.

    Args:
        options: classification's ``task_options`` (``focal_gamma``, ``focal_alpha``, ``label_smoothing``,
            ``pos_weight``, ``class_weights``).
        task: the label space's task.
        positives: positive count per label-space column (binary: two columns, negative and positive class).
        known: rows with a known value per column.

    Returns:
        A dict for ``create_loss(options.loss, task, **kw)``. Binary models have one output (the positive
        class), so binary counts and weights are taken from column 1; a binary ``class_weights`` list is
        ``[negative class, positive class]``.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> o = NS(focal_gamma=2.0, focal_alpha=None, label_smoothing=0.0, pos_weight="auto", class_weights="none")
        >>> loss_kwargs(o, "binary", np.array([75, 25]), np.array([100, 100]))["pos_weight"].tolist()
        [3.0]
    """
    pos = np.asarray(positives, dtype=np.float64)
    n = np.asarray(known, dtype=np.float64)
    if task == "binary":
        pos, n = pos[1:2], n[1:2]
    kw: dict[str, Any] = {"gamma": options.focal_gamma, "alpha": options.focal_alpha, "label_smoothing": options.label_smoothing}
    k = len(pos)
    if options.pos_weight == "auto":
        kw["pos_weight"] = pos_weight_from_counts(pos, n)
    elif isinstance(options.pos_weight, list):
        pw = list(options.pos_weight)
        if task == "binary" and len(pw) == 2:
            pw = pw[1:]  # given per class of the label space: the positive class' value
        if len(pw) != k:
            raise ValueError(f"task_options.pos_weight has {len(options.pos_weight)} values; the model has {k} output(s)")
        kw["pos_weight"] = torch.tensor(pw, dtype=torch.float32)
    cw = options.class_weights
    if cw == "auto":
        kw["weight"] = class_weights_from_counts(pos, int(n.max()) if task == "multiclass" else n, task)
    elif isinstance(cw, list):
        if task == "binary":
            if len(cw) != 2:
                raise ValueError(f"task_options.class_weights: a binary task needs 2 values [negative, positive], got {len(cw)}")
            kw["weight"] = torch.tensor([[cw[0]], [cw[1]]], dtype=torch.float32)
        else:
            if len(cw) != k:
                raise ValueError(f"task_options.class_weights has {len(cw)} values but there are {k} labels")
            kw["weight"] = torch.tensor(cw, dtype=torch.float32)
    return kw
