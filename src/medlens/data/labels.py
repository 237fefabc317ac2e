"""The label space, and turning raw label values into target vectors.

Targets are float vectors over ``label_names``: 1 positive, 0 negative, NaN unknown. Binary and multiclass
targets are one-hot (all-NaN when unknown); multi-label targets are multi-hot with NaN for findings that were
not annotated. Unknown is never silently negative unless ``unknown_labels: negative`` is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medlens.config import Task  # the one definition of the task names

#: how each label kind lays out targets and network outputs: (one class per row, one output for two names)
LAYOUT: dict[str, tuple[bool, bool]] = {"binary": (True, True), "multiclass": (True, False), "multilabel": (False, False), "anomaly": (True, True)}


class LabelError(ValueError):
    """A label value is not in the label space, or the label space is inconsistent."""


@dataclass(frozen=True)
class LabelSpace:
    """Explicit, ordered label names and the task they define.

    Example:
        >>> ls = LabelSpace(("normal", "pneumonia"), "binary")
        >>> ls.num_outputs
        1
    """

    names: tuple[str, ...]
    task: Task

    def __post_init__(self) -> None:
        if len(self.names) == 0:
            raise LabelError("the label space is empty")
        if len(set(self.names)) != len(self.names):
            raise LabelError(f"duplicate label names: {list(self.names)}")
        if self.task not in LAYOUT:
            raise LabelError(f"unknown task {self.task!r}; valid: {', '.join(LAYOUT)}")
        if self.single_output and len(self.names) != 2:
            raise LabelError(f"a binary task needs exactly 2 label names (negative, positive), got {list(self.names)}")

    @property
    def exclusive(self) -> bool:
        """One class per sample (one-hot targets): binary, multiclass and the normal/abnormal view."""
        return LAYOUT[self.task][0]

    @property
    def single_output(self) -> bool:
        """Two names scored by one output (the second is the positive class)."""
        return LAYOUT[self.task][1]

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def num_outputs(self) -> int:
        """Number of network outputs: 1 logit for binary, one per label otherwise."""
        return 1 if self.single_output else len(self.names)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Names of the columns metrics are reported for (binary: the positive class only)."""
        return (self.names[1],) if self.single_output else self.names

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise LabelError(f"unknown label {name!r}; the label space is {list(self.names)}") from None

    def to_dict(self) -> dict:
        return {"names": list(self.names), "task": self.task}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpace:
        return cls(tuple(d["names"]), d["task"])


def one_hot(index: int | None, k: int) -> np.ndarray:
    """One-hot float32 vector; all NaN when ``index`` is None (unknown)."""
    v = np.full(k, np.nan if index is None else 0.0, dtype=np.float32)
    if index is not None:
        v[index] = 1.0
    return v


def encode_single(value: str | int | None, space: LabelSpace, where: str = "") -> np.ndarray:
    """Encode one class name (binary/multiclass) as a one-hot vector."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return one_hot(None, space.num_labels)
    name = str(value)
    if name not in space.names:
        raise LabelError(f"{where}unknown label {name!r}; expected one of {list(space.names)}")
    return one_hot(space.names.index(name), space.num_labels)


def encode_multi(
    present: Iterable[str] | None,
    space: LabelSpace,
    *,
    known: Iterable[str] | None = None,
    unknown_labels: Literal["ignore", "negative"] = "ignore",
    where: str = "",
) -> np.ndarray:
    """Encode a set of present findings as a multi-hot vector.

    Args:
        present: label names annotated positive; None means the row has no annotation at all.
        space: the label space.
        known: names whose absence is a real negative (e.g. every label the source annotates). Default: all.
        unknown_labels: ``negative`` turns unknown into 0.
        where: prefix for error messages (file and row).
    """
    k = space.num_labels
    if present is None:
        v = np.full(k, np.nan, dtype=np.float32)
    else:
        known_set = set(space.names) if known is None else set(known)
        v = np.array([0.0 if n in known_set else np.nan for n in space.names], dtype=np.float32)
        for name in present:
            if name not in space.names:
                raise LabelError(f"{where}unknown label {name!r}; expected one of {list(space.names)}")
            v[space.names.index(name)] = 1.0
    if unknown_labels == "negative":
        v = np.nan_to_num(v, nan=0.0)
    return v


def infer_task(names: Sequence[str], multi: bool) -> Task:
    if multi:
        return "multilabel"
    return "binary" if len(names) == 2 else "multiclass"


def targets_mask(targets: np.ndarray) -> np.ndarray:
    """Boolean mask of known entries."""
    return ~np.isnan(targets)
