"""Tasks as plug-ins: one folder per task, one registry line each.

A :class:`~medlens.tasks.base.Task` owns everything task-specific (loss, LightningModule, outputs -> scores,
operating point, metrics, decisions and their presentation, explanations, ONNX head, manifest section). The
rest of medlens asks the task object of a label space, a manifest or a data config, and never tests a name.

Adding a task: write ``medlens/tasks/<name>/__init__.py`` with a :class:`Task` subclass (``name``, ``kinds``
and the hooks), then add one ``register_task`` line below.

Example:
    >>> from medlens.tasks import get_task, list_tasks
    >>> get_task("multilabel").name
    'classification'
    >>> list_tasks()
    ['anomaly', 'classification']
"""

from __future__ import annotations

from typing import Any

from medlens.tasks.anomaly import AnomalyTask
from medlens.tasks.base import NEGATIVE, POSITIVE, Finding, Prediction, PredictorLike, Presentation, Task
from medlens.tasks.classification import ClassificationTask

_BY_KIND: dict[str, type[Task]] = {}
_BY_NAME: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Register a task class for its label kinds."""
    _BY_NAME[cls.name] = cls
    for kind in cls.kinds:
        _BY_KIND[kind] = cls
    return cls


register_task(ClassificationTask)
register_task(AnomalyTask)

#: the task a data config selects when ``data.task`` is not set (the reader decides the label kind)
DEFAULT_TASK = ClassificationTask


def list_tasks() -> list[str]:
    """Registered task names."""
    return sorted(_BY_NAME)


def list_kinds() -> list[str]:
    """Label kinds some task serves (``data.task`` values)."""
    return sorted(_BY_KIND)


def get_task(kind: str) -> Task:
    """The task object serving a label kind (``binary``, ``multiclass``, ``multilabel``, ``anomaly``, ...).

    Raises:
        ValueError: an unknown kind, with the valid ones.
    """
    try:
        return _BY_KIND[kind](kind)
    except KeyError:
        raise ValueError(f"unknown task {kind!r}; valid: {', '.join(list_kinds())}") from None


def task_of(obj: Any) -> Task:
    """The task of a label space, a manifest, a sample table or a bundle (anything with ``.task`` / ``.label_space``)."""
    for attr in ("manifest", "label_space"):
        if hasattr(obj, attr) and not isinstance(obj, str):
            return task_of(getattr(obj, attr))
    return get_task(obj.task if hasattr(obj, "task") else obj)


def read_table(data_cfg: Any):
    """Read the dataset of a ``data`` config section as its task sees it.

    Example:
        >>> table = read_table(cfg.data)  # doctest: +SKIP
    """
    cls = _BY_KIND.get(data_cfg.task, DEFAULT_TASK) if data_cfg.task else DEFAULT_TASK
    table = cls.read(data_cfg)
    return task_of(table).prepare_table(table, data_cfg)


__all__ = [
    "NEGATIVE", "POSITIVE", "AnomalyTask", "ClassificationTask", "Finding", "Prediction", "PredictorLike", "Presentation", "Task",
    "get_task", "list_kinds", "list_tasks", "read_table", "register_task", "task_of",
]
