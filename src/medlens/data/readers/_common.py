"""Helpers shared by readers: label spaces, path checks, bad-file handling."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlens.data.labels import LabelError, LabelSpace, infer_task
from medlens.data.samples import SampleTable

log = logging.getLogger("medlens.data")


def restrict_labels(
    targets: np.ndarray,
    names: Sequence[str],
    label_names: Sequence[str] | None,
    *,
    task: str | None,
    multi: bool,
    source: str,
    where: Sequence[str] | None = None,
) -> tuple[LabelSpace, np.ndarray, np.ndarray]:
    """The label space and targets of a source, restricted to ``data.label_names`` -- the one rule every reader uses.

    Without ``label_names`` the space is ``names`` (in that order). With it, the space is ``label_names`` in its
    order, and a label the source holds outside it is **filtered**: dropped from the rows that name it
    (multi-label: the row keeps its other labels), or, for a single-label task, the row itself is dropped (its
    class is not one of the requested ones). One warning per source gives the number of rows and, per dropped
    label, its positives; nothing is an error. A requested label the source does not hold is negative on the
    annotated rows and unknown on the others (multi-label lists: listed = positive, others negative).

    Args:
        targets: (N, len(names)) float32 over ``names``: 1 positive, 0 negative, NaN unknown.
        names: the labels the source holds (its columns).
        label_names: ``data.label_names`` or None.
        task: ``data.task`` (or the source's own task); None infers it from the final names and ``multi``.
        multi: whether the source lists several labels per row.
        source: the file/URL named in the warning.
        where: per row, how to name it in the warning (``row 5``, ``line 7``, a path).

    Returns:
        ``(space, targets over space (N, K), keep)``; ``keep`` (N,) is False for single-label rows whose class
        was filtered out.

    Example:
        >>> t = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32)
        >>> space, out, keep = restrict_labels(t, ["a", "b", "c"], ["b", "a"], task=None, multi=True, source="x")
        >>> space.names, out.tolist(), keep.tolist()
        (('b', 'a'), [[0.0, 1.0], [0.0, 0.0]], [True, True])
    """
    names = list(names)
    targets = np.asarray(targets, dtype=np.float32)
    n = len(targets)
    if not label_names:
        return LabelSpace(tuple(names), task or infer_task(names, multi)), targets, np.ones(n, dtype=bool)  # type: ignore[arg-type]
    final = list(label_names)
    space = LabelSpace(tuple(final), task or infer_task(final, multi))  # type: ignore[arg-type]
    col = {x: j for j, x in enumerate(names)}
    annotated = ~np.isnan(targets).all(axis=1) if targets.shape[1] else np.zeros(n, dtype=bool)
    out = np.empty((n, len(final)), dtype=np.float32)
    for j, x in enumerate(final):
        out[:, j] = targets[:, col[x]] if x in col else np.where(annotated, 0.0, np.nan)
    keep = np.ones(n, dtype=bool)
    wanted = set(final)
    dropped = [j for j, x in enumerate(names) if x not in wanted]
    if dropped:
        pos = targets[:, dropped] == 1  # NaN compares False
        hit = pos.any(axis=1)
        if hit.any():
            single = space.task in ("binary", "multiclass")
            if single:
                keep = ~(hit & ~(out == 1).any(axis=1))
            counts = {names[j]: int(c) for j, c in zip(dropped, pos.sum(axis=0), strict=True) if c}
            first = int(np.argmax(hit))
            log_filtered_labels(source, int(hit.sum()), counts, final, None if where is None else str(where[first]), rows_dropped=single)
    return space, out, keep


def log_filtered_labels(source: str, rows: int, counts: dict[str, int], label_names: Sequence[str], example: str | None, rows_dropped: bool) -> None:
    """The one warning per source about labels outside ``data.label_names`` (how many rows, positives per label)."""
    action = "those rows are dropped (single-label task)" if rows_dropped else "those labels are dropped from the rows, which are kept"
    eg = f"; first: {example}" if example else ""
    log.warning(
        "%s: %d rows name labels outside data.label_names %s (rows per label: %s%s); %s",
        source, rows, list(label_names), counts, eg, action,
    )


def drop_labels_without_positives(table: SampleTable) -> SampleTable:
    """A multi-label table without the labels no row is positive for, with one warning naming them and their counts.

    A label without a positive image cannot be learnt, and its AUROC, average precision and sensitivity are
    undefined; every source gets this rule (:func:`medlens.data.readers.read_dataset` applies it to the whole
    dataset, after ``max_samples``). Binary and multiclass tables are returned unchanged (an empty class is an
    error there, see :meth:`SampleTable.check_nonempty_classes`).

    Raises:
        LabelError: no label has a positive image.

    Example:
        >>> t = SampleTable(LabelSpace(("a", "b"), "multilabel"), ["x", "y"], ["x.png", "y.png"], np.array([[1, 0], [0, 0]]))
        >>> drop_labels_without_positives(t).label_space.names
        ('a',)
    """
    space = table.label_space
    if space.task != "multilabel" or len(table) == 0:
        return table
    pos = table.positives()
    keep = [j for j, c in enumerate(pos) if c > 0]
    if len(keep) == space.num_labels:
        return table
    if not keep:
        raise LabelError(f"{table.source}: no label of {list(space.names)} has a positive image")
    known = (~np.isnan(table.targets)).sum(axis=0)
    empty = {space.names[j]: f"0 positive of {int(known[j])} known" for j in range(space.num_labels) if pos[j] == 0}
    log.warning("%s: dropping %d of %d labels with no positive image: %s", table.source, len(empty), space.num_labels, empty)
    return SampleTable(
        LabelSpace(tuple(space.names[j] for j in keep), space.task), table.ids, table.images, table.targets[:, keep],
        table.groups, table.splits, table.metadata, source=table.source, texts=table.texts, text_column=table.text_column,
    )


def resolve_image(root: Path, rel: str) -> str:
    p = Path(rel)
    return str(p if p.is_absolute() else root / p)


def check_images_exist(paths: Sequence[str], rows: Sequence[int], on_bad: str, source: str) -> np.ndarray:
    """Keep-mask of rows whose image file exists; raise on the first missing one unless ``on_bad == 'skip'``."""
    keep = np.ones(len(paths), dtype=bool)
    missing = []
    for i, p in enumerate(paths):
        if not os.path.exists(p):
            if on_bad == "error":
                raise FileNotFoundError(f"{source}: row {rows[i]}: image file not found: {p}")
            keep[i] = False
            missing.append(p)
    if missing:
        log.warning("%s: skipped %d rows whose image is missing, e.g. %s", source, len(missing), missing[:3])
    return keep
