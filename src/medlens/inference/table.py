"""Predictions as a table: the rows of ``medlens predict --out preds.csv`` and of the MLflow model's output.

Per input: its source, the task's own columns (a classifier: one probability column per label, then per finding
the threshold it was compared with and the decision, and the predicted labels; a detector: the score, threshold
and decision; a predicted value: the value and its interval) and, for an input that could not be read, the reason in
plain words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medlens.tasks import Prediction, task_of

if TYPE_CHECKING:
    from medlens.bundle import Manifest

#: a Python object's repr (``<_io.BytesIO object at 0x7f...>``) says nothing to a person
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def plain_error(source: str, error: str | None) -> str:
    """An input's error without the source repeated in front and without Python object reprs.

    Example:
        >>> plain_error("a.png", "a.png: not a readable image (cannot identify image file <_io.BytesIO object at 0x7f>)")
        'not a readable image (cannot identify image file)'
    """
    text = _OBJECT_REPR.sub("", error or "")
    if source and text.startswith(f"{source}: "):
        text = text[len(source) + 2:]
    return text.strip()


def prediction_rows(preds: Sequence[Prediction], manifest: Manifest) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a predictions table: ``source``, the task's own columns (:meth:`Task.table_columns`), ``error``.

    Args:
        preds: the predictions, in order.
        manifest: the bundle manifest; its task says what the columns are.

    Example:
        >>> header, rows = prediction_rows(preds, predictor.manifest)  # doctest: +SKIP
        >>> header[:4]  # doctest: +SKIP
        ['source', 'prob_normal', 'prob_pneumonia', 'threshold_pneumonia']
    """
    task = task_of(manifest)
    columns = task.table_columns(manifest)
    gate = manifest.ood is not None  # the out-of-distribution gate's columns, when the bundle has one
    carried = any(p.text is not None for p in preds)  # text carried with the inputs (predict --text): its own column
    header = ["source", *columns, *(["ood", "ood_score"] if gate else []), *([text_column_name(manifest)] if carried else []),
              "error"]
    rows = []
    for p in preds:
        own = task.table_row(p, manifest) if p.ok else [""] * len(columns)
        flags = ([("" if p.ood is None else str(bool(p.ood)).lower()), ("" if p.ood_score is None else f"{p.ood_score:.6g}")]
                 if gate else [])
        text = [p.text or ""] if carried else []
        rows.append([p.source, *own, *flags, *text, "" if p.ok else plain_error(p.source, p.error)])
    return header, rows


def text_column_name(manifest: Manifest) -> str:
    """The column carried text is written under: the training data's ``data.text_column`` (e.g. ``report``), else ``text``.

    Example:
        >>> text_column_name(predictor.manifest)  # doctest: +SKIP
        'report'
    """
    data = (getattr(manifest, "config", None) or {}).get("data") or {}
    return str(data.get("text_column") or "text")
