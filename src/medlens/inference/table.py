"""Predictions as a table: the rows of ``medlens predict --out preds.csv`` and of the MLflow model's output.

Per input: its source, one probability column per label (and the anomaly score when the task has one), then for
each finding the threshold it was compared with and the decision (``positive``/``negative``), the predicted
labels and, for an input that could not be read, the reason in plain words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medlens.tasks import Prediction, task_of

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


def prediction_rows(preds: Sequence[Prediction], label_names: Sequence[str], manifest: Any = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a predictions table.

    Args:
        preds: the predictions, in order.
        label_names: the model's labels (one probability column each).
        manifest: the bundle manifest; its task names the findings that get threshold and decision columns.
            Without it every label with a threshold or decision in the predictions gets them.

    Example:
        >>> header, rows = prediction_rows(preds, predictor.label_names, predictor.manifest)  # doctest: +SKIP
        >>> header[:4]  # doctest: +SKIP
        ['source', 'prob_normal', 'prob_pneumonia', 'threshold_pneumonia']
    """
    task = task_of(manifest) if manifest is not None else None
    scored = any(p.score is not None for p in preds)  # anomaly bundles: a score column
    if task is not None:
        ok = next((p for p in preds if p.ok), None)
        findings = [f.label for f in task.findings(ok, manifest)] if ok is not None else []
    else:
        findings = [n for n in label_names if any(n in p.thresholds or n in p.decisions for p in preds)]
    header = ["source", *[f"prob_{n}" for n in label_names], *(["anomaly_score"] if scored else [])]
    for n in findings:
        header += [f"threshold_{n}", f"decision_{n}"]
    header += ["predicted", "error"]
    rows = []
    for p in preds:
        probs = [("" if not p.ok or n not in p.probabilities else f"{p.probabilities[n]:.6f}") for n in label_names]
        row = [p.source, *probs, *(["" if p.score is None else f"{p.score:.6g}"] if scored else [])]
        by_label = {f.label: f for f in task.findings(p, manifest)} if task is not None and p.ok else {}
        for n in findings:
            if not p.ok:
                row += ["", ""]
            elif task is not None:
                f = by_label.get(n)
                row += ["" if f is None else ("argmax" if f.rule == "argmax" else "" if f.threshold is None else f"{f.threshold:.6g}"),
                        "" if f is None else f.decision]
            else:
                thr = p.thresholds.get(n)
                row += ["argmax" if thr is None else f"{thr:.6g}", "positive" if p.decisions.get(n, n in p.predicted) else "negative"]
        rows.append([*row, "|".join(p.predicted), "" if p.ok else plain_error(p.source, p.error)])
    return header, rows
