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
    >>> list_tasks()
    ['anomaly', 'classification', 'regression']
"""

from __future__ import annotations

from medlens.tasks.anomaly import AnomalyTask
from medlens.tasks.base import (
    NEGATIVE,
    POSITIVE,
    Finding,
    Prediction,
    PredictorLike,
    Presentation,
    Task,
    TaskOptions,
)

# ---- the registry lines: each import registers its task (classification first: the default)
from medlens.tasks.classification import ClassificationTask  # noqa: I001
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
from medlens.tasks.regression import RegressionTask

__all__ = [
    "NEGATIVE", "POSITIVE", "AnomalyTask", "ClassificationTask", "Finding", "Prediction", "PredictorLike", "Presentation",
    "RegressionTask", "Task", "TaskOptions", "default_task", "get_task", "list_kinds", "list_tasks", "read_table", "register_task",
    "task_for_config", "task_of",
]
