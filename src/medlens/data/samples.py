"""The one sample schema every reader produces.

A reader returns a :class:`SampleTable`: columns of equal length (image references, targets, groups, predefined
splits, metadata). Columns keep memory small for large datasets (100k rows x 14 labels = 5.6 MB of targets) and
make splits plain index arrays. ``table[i]`` gives one :class:`Sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medlens.data.labels import LabelSpace


@dataclass(frozen=True)
class Sample:
    """One image with its labels.

    Attributes:
        id: stable identifier (file name, database id, ...).
        image: a file path, or an in-memory uint8 array (H, W) or (H, W, C).
        targets: float32 vector over the label space; NaN = unknown.
        group: patient/exam id; samples of one group never land in two splits.
        split: the dataset's own split (train/val/test) when it has one.
        metadata: tabular fields (age, sex, site, ...).
        text: free text carried with the image (``data.text_column``, e.g. a radiology report); never a label.
    """

    id: str
    image: str | np.ndarray
    targets: np.ndarray
    group: str | None = None
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None


class SampleTable:
    """Column store of samples with an explicit label space.

    Args:
        label_space: label names and task.
        ids: one id per sample.
        images: file paths (sequence of str) or an in-memory uint8 array of shape (N, H, W[, C]).
        targets: float32 array (N, K), NaN unknown.
        groups: optional group ids (patients/exams).
        splits: optional predefined split names ("train", "val", "test").
        metadata: optional DataFrame with N rows.
        source: a description used in messages (file name, URL).
        provenance: where the labels came from (e.g. a database label set with its ids and versions); kept by
            :meth:`subset` and shown in :meth:`summary`, so the run's manifest records it.
        texts: optional free text per row (``data.text_column``), kept by :meth:`subset`; never read as a label.
        text_column: the name of that column in the source.
    """

    def __init__(
        self,
        label_space: LabelSpace,
        ids: Sequence[str],
        images: Sequence[str] | np.ndarray,
        targets: np.ndarray,
        groups: Sequence[str | None] | None = None,
        splits: Sequence[str | None] | None = None,
        metadata: pd.DataFrame | None = None,
        source: str = "",
        provenance: dict[str, Any] | None = None,
        texts: Sequence[str | None] | None = None,
        text_column: str | None = None,
    ) -> None:
        n = len(ids)
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or targets.shape != (n, label_space.num_labels):
            raise ValueError(f"{source}: targets shape {targets.shape} != ({n}, {label_space.num_labels})")
        if len(images) != n:
            raise ValueError(f"{source}: {len(images)} images for {n} ids")
        for name, col in (("groups", groups), ("splits", splits), ("texts", texts)):
            if col is not None and len(col) != n:
                raise ValueError(f"{source}: {name} has {len(col)} rows, expected {n}")
        if metadata is not None and len(metadata) != n:
            raise ValueError(f"{source}: metadata has {len(metadata)} rows, expected {n}")
        self.label_space = label_space
        self.ids = np.asarray(ids, dtype=object)
        self.images = images if isinstance(images, np.ndarray) and images.dtype != object else np.asarray(images, dtype=object)
        self.targets = targets
        self.groups = None if groups is None else np.asarray([None if g is None else str(g) for g in groups], dtype=object)
        self.splits = None if splits is None else np.asarray(splits, dtype=object)
        self.metadata = None if metadata is None else metadata.reset_index(drop=True)
        self.source = source
        self.provenance = provenance
        self.texts = None if texts is None else np.asarray([None if t is None else str(t) for t in texts], dtype=object)
        self.text_column = text_column

    # ------------------------------------------------------------------ basic protocol
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def in_memory(self) -> bool:
        """True when images are a uint8 array rather than file paths."""
        return isinstance(self.images, np.ndarray) and self.images.dtype != object

    def __getitem__(self, i: int) -> Sample:
        meta = {} if self.metadata is None else self.metadata.iloc[int(i)].to_dict()
        return Sample(
            id=str(self.ids[i]),
            image=self.images[i],
            targets=self.targets[i],
            group=None if self.groups is None else self.groups[i],
            split=None if self.splits is None else self.splits[i],
            metadata=meta,
            text=None if self.texts is None else self.texts[i],
        )

    def subset(self, indices: np.ndarray | Sequence[int]) -> SampleTable:
        """A new table with the given rows (the original is never modified)."""
        idx = np.asarray(indices, dtype=np.int64)
        return SampleTable(
            self.label_space,
            self.ids[idx],
            self.images[idx],
            self.targets[idx],
            None if self.groups is None else self.groups[idx],
            None if self.splits is None else self.splits[idx],
            None if self.metadata is None else self.metadata.iloc[idx],
            self.source,
            self.provenance,
            None if self.texts is None else self.texts[idx],
            self.text_column,
        )

    # ------------------------------------------------------------------ summaries
    def positives(self) -> np.ndarray:
        """Positive count per label (unknown not counted)."""
        return np.nansum(self.targets, axis=0)

    def label_counts(self) -> dict[str, dict[str, Any]]:
        """Per label: positives, negatives, unknown; for numeric targets: n known, unknown, mean, min, max."""
        t = self.targets
        out: dict[str, dict[str, Any]] = {}
        for j, name in enumerate(self.label_space.names):
            col = t[:, j]
            if self.label_space.values:
                known = col[~np.isnan(col)]
                out[name] = {"n": int(known.size), "unknown": int(col.size - known.size),
                             **({"mean": float(known.mean()), "min": float(known.min()), "max": float(known.max())} if known.size else {})}
                continue
            out[name] = {
                "positive": int(np.sum(col == 1)),
                "negative": int(np.sum(col == 0)),
                "unknown": int(np.sum(np.isnan(col))),
            }
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_samples": len(self),
            "num_groups": None if self.groups is None else int(len(set(self.groups.tolist()))),
            "task": self.label_space.task,
            "label_names": list(self.label_space.names),
            "label_counts": self.label_counts(),
            **({"provenance": self.provenance} if self.provenance else {}),
            **({"text_column": self.text_column, "rows_with_text": int(sum(bool(t) for t in self.texts))}
               if self.texts is not None else {}),
        }

    def class_index(self) -> np.ndarray:
        """For binary/multiclass: the class index per row (-1 when unknown)."""
        t = np.nan_to_num(self.targets, nan=-1.0)
        idx = np.argmax(t, axis=1)
        idx[np.all(np.isnan(self.targets), axis=1)] = -1
        return idx

    def check_nonempty_classes(self) -> None:
        """Raise if a class (binary/multiclass) has no sample, naming it."""
        if self.label_space.exclusive:
            counts = self.positives()
            empty = [n for n, c in zip(self.label_space.names, counts, strict=True) if c == 0]
            if empty:
                raise ValueError(f"{self.source}: class {empty[0]!r} has no samples" + (f" (also {empty[1:]})" if len(empty) > 1 else ""))
