"""The regression task's own config section (``task_options`` in the YAML).

Example YAML::

    data: {kind: csv, path: labels.csv, image_column: path, label_column: "Patient Age", group_column: "Patient ID",
           task: regression}
    task_options:
      loss: huber            # mse | l1 | huber
      interval_level: 0.9    # prediction intervals from validation residuals (split conformal)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medlens.tasks.base import TaskOptions


class RegressionOptions(TaskOptions):
    """A numeric target (an age, a grade) predicted from the image."""

    loss: Literal["mse", "l1", "huber"] = "huber"
    huber_delta: float = Field(1.0, gt=0.0)  # in standard deviations of the training targets
    # the network learns (y - mean) / sd of the training targets; the bundle maps its output back to y
    standardize: bool = True
    # coverage of the prediction interval around each value: the |residual| quantile on validation (split conformal)
    interval_level: float = Field(0.9, gt=0.0, lt=1.0)
    # rows whose value is outside [min_value, max_value] are dropped with a count (e.g. ages of 400)
    min_value: float | None = None
    max_value: float | None = None
