"""Tasks as plug-ins: one folder per task, one registry line each.

A :class:`~medlens.tasks.base.Task` owns everything task-specific (its config section, loss, LightningModule,
outputs -> scores, operating point, metrics, its prediction record and how it is shown, explanations, ONNX head,
manifest section). The rest of medlens asks the task object of a label space, a manifest or a config, and never
tests a name.

Adding a task: write ``medlens/tasks/<name>/__init__.py`` with a :class:`Task` subclass decorated with
``@register_task`` (``name``, ``kinds``, ``options_model`` and the hooks), then import it below: one line.

Example:
    >>> from medlens.tasks import get_task, list_tasks
    >>> get_task("multilabel").name
    'classification'
    >>> "anomaly" in list_tasks()
    True
"""

from __future__ import annotations

# ruff: noqa: I001 -- the order of the registry lines is the registration order
from medlens.tasks.base import (
    NEGATIVE,
    POSITIVE,
    Finding,
    Prediction,
    PredictorLike,
    Presentation,
    ReportInputs,
    ReportPart,
    Task,
    TaskOptions,
)
from medlens.tasks.registry import (
    default_task,
    get_task,
    list_kinds,
    list_tasks,
    read_table,
    register_task,
    task_for_config,
    task_of,
)

# ---- the registry lines: each import registers its task (classification is the default task)
from medlens.tasks.classification import ClassificationTask
from medlens.tasks.anomaly import AnomalyTask
from medlens.tasks.regression import RegressionTask  # noqa: F401

__all__ = [
    "NEGATIVE", "POSITIVE", "AnomalyTask", "ClassificationTask", "Finding", "Prediction", "PredictorLike", "Presentation",
    "ReportInputs", "ReportPart", "Task", "TaskOptions", "default_task", "get_task", "list_kinds",
    "list_tasks", "read_table", "register_task", "task_for_config", "task_of",
]
