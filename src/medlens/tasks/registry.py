"""The task registry: label kinds and task names -> :class:`~medlens.tasks.base.Task` classes.

A task registers itself from its own folder with the :func:`register_task` decorator; ``medlens/tasks/__init__.py``
imports each task package (one line each), which is all it takes to add one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medlens.tasks.base import Task

if TYPE_CHECKING:
    from medlens.config import RunConfig
    from medlens.data.samples import SampleTable

_BY_KIND: dict[str, type[Task]] = {}
_BY_NAME: dict[str, type[Task]] = {}
_DEFAULT: list[type[Task]] = []


def register_task(cls: type[Task] | None = None, *, default: bool = False) -> Any:
    """Register a task class for its label kinds (a class decorator; ``default=True``: the task a config selects when
    ``data.task`` is unset, the reader then deciding the label kind).

    Example:
        >>> @register_task  # doctest: +SKIP
        ... class MyTask(Task): ...
    """
    def deco(c: type[Task]) -> type[Task]:
        clash = [k for k in c.kinds if k in _BY_KIND and _BY_KIND[k] is not c]
        if clash:
            raise ValueError(f"task {c.name!r}: label kind(s) {clash} already served by {_BY_KIND[clash[0]].name!r}")
        _BY_NAME[c.name] = c
        for kind in c.kinds:
            _BY_KIND[kind] = c
        if default:
            _DEFAULT[:] = [c]
        return c

    return deco if cls is None else deco(cls)


def default_task() -> Task:
    """The task of a config without ``data.task`` (classification), for its first label kind."""
    cls = _DEFAULT[0]
    return cls(cls.kinds[0])


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
        cls = _BY_KIND[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {kind!r}; valid: {', '.join(list_kinds())}") from None
    return cls(kind)


def task_of(obj: Any) -> Task:
    """The task of a label space, a manifest, a sample table or a bundle (anything with ``.task`` / ``.label_space``)."""
    for attr in ("manifest", "label_space"):
        if hasattr(obj, attr) and not isinstance(obj, str):
            return task_of(getattr(obj, attr))
    return get_task(obj.task if hasattr(obj, "task") else obj)


def task_for_config(cfg: RunConfig) -> type[Task]:
    """The task class a config's ``data.task`` selects (the default task when unset: the reader decides the kind).

    Raises:
        ValueError: an unknown ``data.task``, with the valid ones.
    """
    kind = cfg.data.task
    if not kind:
        return _DEFAULT[0]
    if kind not in _BY_KIND:
        raise ValueError(f"data.task: unknown task {kind!r}; valid: {', '.join(list_kinds())}")
    return _BY_KIND[kind]


def read_table(cfg: RunConfig) -> SampleTable:
    """Read the dataset a config describes, as its task sees it.

    Example:
        >>> table = read_table(cfg)  # doctest: +SKIP
    """
    table = task_for_config(cfg).read(cfg)
    return task_of(table).prepare_table(table, cfg)
