"""Classification's own config section (``task_options`` in the YAML): loss and operating point.

Example YAML::

    data: {kind: medmnist, flag: pneumoniamnist}
    task_options:
      loss: focal            # auto (bce; ce for multiclass) | bce | ce | focal
      focal_gamma: 2.0
      pos_weight: auto       # none | auto (negatives / positives per label) | a list
      threshold_method: youden
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medlens.tasks.base import TaskOptions


class ClassificationOptions(TaskOptions):
    """Loss and operating point of a classifier (binary, multiclass, multi-label)."""

    loss: Literal["auto", "bce", "ce", "focal"] = "auto"
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_alpha: float | None = Field(None, ge=0.0, le=1.0)
    class_weights: Literal["none", "auto"] | list[float] = "none"
    pos_weight: Literal["none", "auto"] | list[float] = "none"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # the threshold each label's probability is compared with: max-F1 or Youden's J on validation, or a fixed value
    threshold_method: Literal["f1", "youden", "fixed"] = "f1"
    fixed_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    calibrate: bool = True  # fit temperature scaling on validation
    # binary: flip the score (negate the logit) when validation AUROC < 0.5, recorded in the manifest
    orientation_check: bool = False
