"""The anomaly-detection view of a dataset: normal vs. abnormal.

``data.task: anomaly`` reads the source with its own label space (binary, multiclass or multi-label, exactly as
a classifier would see it) and then relabels every row as normal or abnormal with :func:`to_anomaly_table`.

Label space of an anomaly table: ``(normal_label, abnormal_name)`` with task ``anomaly``; ``abnormal_name`` is
the source's other class when it has exactly two (``pneumonia``, ``malignant``), else ``"abnormal"``. Targets
are one-hot over these two names (NaN when the source label is unknown), so metrics score ``names[1]`` --
"abnormal" -- as the positive class, like a binary classifier.

Which rows are normal:

* ``normal_label`` is one of the source's names: rows whose target for it is 1 (single-label sources: that
  class; multi-label sources: that finding is set). Rows with it 0 are abnormal; unknown stays unknown.
* ``normal_label`` is not a source name and the source is multi-label (e.g. NIH's ``No Finding``, which the
  reader turns into "no finding set"): rows whose findings are all known and 0 are normal, rows with any
  finding set are abnormal, the rest unknown.
"""

from __future__ import annotations

import numpy as np

from medlens.data.labels import LabelError, LabelSpace
from medlens.data.samples import SampleTable

ABNORMAL = "abnormal"


def anomaly_label_space(source: LabelSpace, normal_label: str) -> LabelSpace:
    """``(normal_label, abnormal name)`` for a source label space (see the module docstring).

    Example:
        >>> anomaly_label_space(LabelSpace(("malignant", "normal, benign"), "binary"), "normal, benign").names
        ('normal, benign', 'malignant')
    """
    names = list(source.names)
    if len(names) == 2 and normal_label in names and source.task != "multilabel":
        other = names[1 - names.index(normal_label)]
        return LabelSpace((normal_label, other), "anomaly")
    abnormal = ABNORMAL if normal_label != ABNORMAL else "not_" + ABNORMAL
    return LabelSpace((normal_label, abnormal), "anomaly")


def normal_flags(table: SampleTable, normal_label: str) -> np.ndarray:
    """Per row: 1.0 normal, 0.0 abnormal, NaN unknown.

    Example:
        >>> t = SampleTable(LabelSpace(("normal", "pneumonia"), "binary"), ["a", "b"], ["a.png", "b.png"],
        ...                 np.array([[1, 0], [0, 1]], np.float32))
        >>> normal_flags(t, "normal").tolist()
        [1.0, 0.0]
    """
    space = table.label_space
    t = table.targets
    if normal_label in space.names:
        return t[:, space.names.index(normal_label)].astype(np.float32)
    if space.task == "multilabel":
        any_pos = np.nansum(t, axis=1) > 0
        all_known = ~np.isnan(t).any(axis=1)
        out = np.full(len(table), np.nan, dtype=np.float32)
        out[any_pos] = 0.0
        out[~any_pos & all_known] = 1.0
        return out
    raise LabelError(
        f"{table.source}: task_options.normal_label {normal_label!r} is not one of the labels {list(space.names)}"
        + ("" if space.task != "binary" else " (name the normal class exactly)")
    )


def to_anomaly_table(table: SampleTable, normal_label: str | None) -> SampleTable:
    """Relabel a table as normal vs. abnormal (a new table; the source is not modified).

    Args:
        table: the source table with its own label space.
        normal_label: the class (or multi-label "no finding" name) an autoencoder is trained on.

    Example:
        >>> t = SampleTable(LabelSpace(("malignant", "normal, benign"), "binary"), ["a", "b"], ["a.png", "b.png"],
        ...                 np.array([[1, 0], [0, 1]], np.float32))
        >>> a = to_anomaly_table(t, "normal, benign")
        >>> a.label_space.names, a.targets.tolist()
        (('normal, benign', 'malignant'), [[0.0, 1.0], [1.0, 0.0]])
    """
    if table.label_space.task == "anomaly" and table.label_space.names[0] == normal_label and table.label_space.num_labels == 2:
        return table  # already an anomaly view
    if not normal_label:
        raise LabelError(
            f"{table.source}: data.task is anomaly but task_options.normal_label is not set; name the class the autoencoder "
            f"learns from, one of {list(table.label_space.names)}"
        )
    flags = normal_flags(table, normal_label)
    targets = np.stack([flags, 1.0 - flags], axis=1).astype(np.float32)  # NaN stays NaN in both columns
    space = anomaly_label_space(table.label_space, normal_label)
    return SampleTable(space, table.ids, table.images, targets, table.groups, table.splits, table.metadata, table.source, table.provenance,
                       table.texts, table.text_column)
