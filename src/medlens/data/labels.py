"""The label space, and turning raw label values into target vectors.

Targets are float vectors over ``label_names``: 1 positive, 0 negative, NaN unknown. Binary and multiclass
targets are one-hot (all-NaN when unknown); multi-label targets are multi-hot with NaN for findings that were
not annotated. Unknown is never silently negative unless ``unknown_labels: negative`` is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Layout:
    """How a label kind lays out targets and network outputs.

    Attributes:
        exclusive: one class per row (one-hot targets).
        single_output: two names scored by one output (the second is the positive class).
        values: targets are numbers (e.g. an age), not 0/1 memberships; ``names`` are the predicted quantities.
    """

    exclusive: bool
    single_output: bool
    values: bool = False


#: label kinds and their layout. The data layer knows the kinds its readers produce; a task whose label kind is
#: its own (a normal-vs-abnormal view, a numeric target) adds it with :func:`register_layout` from its own folder.
LAYOUT: dict[str, Layout] = {
    "binary": Layout(exclusive=True, single_output=True),
    "multiclass": Layout(exclusive=True, single_output=False),
    "multilabel": Layout(exclusive=False, single_output=False),
}


def register_layout(kind: str, layout: Layout) -> None:
    """Add a label kind (called by a task package at import). Re-registering the same layout is a no-op."""
    if LAYOUT.get(kind, layout) != layout:
        raise LabelError(f"label kind {kind!r} is already registered with another layout")
    LAYOUT[kind] = layout


class LabelError(ValueError):
    """A label value is not in the label space, or the label space is inconsistent."""


@dataclass(frozen=True)
class LabelSpace:
    """Explicit, ordered label names and the label kind (``task``) they define.

    ``layout`` is looked up from the kind when not given (a bundle stores it, so it loads without the task that
    registered the kind).

    Example:
        >>> ls = LabelSpace(("normal", "pneumonia"), "binary")
        >>> ls.num_outputs
        1
    """

    names: tuple[str, ...]
    task: str
    layout: Layout | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.names) == 0:
            raise LabelError("the label space is empty")
        if len(set(self.names)) != len(self.names):
            raise LabelError(f"duplicate label names: {list(self.names)}")
        if self.layout is None:
            if self.task not in LAYOUT:
                raise LabelError(f"unknown label kind {self.task!r}; valid: {', '.join(sorted(LAYOUT))}")
            object.__setattr__(self, "layout", LAYOUT[self.task])
        if self.single_output and len(self.names) != 2:
            raise LabelError(f"a {self.task} label space needs exactly 2 label names (negative, positive), got {list(self.names)}")

    @property
    def _layout(self) -> Layout:
        assert self.layout is not None  # set in __post_init__
        return self.layout

    @property
    def exclusive(self) -> bool:
        """One class per sample (one-hot targets): binary, multiclass and the normal/abnormal view."""
        return self._layout.exclusive

    @property
    def single_output(self) -> bool:
        """Two names scored by one output (the second is the positive class)."""
        return self._layout.single_output

    @property
    def values(self) -> bool:
        """Targets are numbers (e.g. an age), not class memberships."""
        return self._layout.values

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
        lay = self._layout
        return {"names": list(self.names), "task": self.task,
                "layout": {"exclusive": lay.exclusive, "single_output": lay.single_output, "values": lay.values}}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpace:
        lay = d.get("layout")
        return cls(tuple(d["names"]), d["task"], None if lay is None else layout_from_dict(lay))


def layout_from_dict(d: dict) -> Layout:
    """A :class:`Layout` from its JSON form (every field a boolean; ``values`` optional)."""
    if not isinstance(d, dict) or not all(isinstance(d.get(k), bool) for k in ("exclusive", "single_output")):
        raise LabelError(f"label layout must have boolean exclusive and single_output, got {d!r}")
    return Layout(d["exclusive"], d["single_output"], bool(d.get("values", False)))


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


def infer_task(names: Sequence[str], multi: bool) -> str:
    if multi:
        return "multilabel"
    return "binary" if len(names) == 2 else "multiclass"


def targets_mask(targets: np.ndarray) -> np.ndarray:
    """Boolean mask of known entries."""
    return ~np.isnan(targets)
