"""Metrics as pure functions over (probabilities, targets, mask). No torch, no I/O.

Conventions:
* ``probs``: (N, K) scores per label (binary: K = 1, the positive class; multiclass: softmax rows).
* ``targets``: (N, K) 0/1 with NaN for unknown; ``mask`` is ``~isnan(targets)`` unless given.
* A metric that is undefined (a label with no positives for AUROC, no predicted positives for precision)
  is ``None`` in the output, never 0 or 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("medlens.metrics")


def _nan_to_none(x: float | None) -> float | None:
    if x is None:
        return None
    return None if (isinstance(x, float) and math.isnan(x)) else float(x)


def binary_auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is absent."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    n = len(s)
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def confusion(pred: np.ndarray, y: np.ndarray) -> dict[str, int]:
    pred = np.asarray(pred).astype(bool)
    y = np.asarray(y).astype(bool)
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "tn": int(np.sum(~pred & ~y)),
        "fn": int(np.sum(~pred & y)),
    }


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def rates(c: dict[str, int]) -> dict[str, float]:
    """Precision, recall (sensitivity), specificity, F1 and accuracy from confusion counts (NaN if undefined)."""
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _safe_div(tn, tn + fp),
        "f1": f1,
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
    }


def _macro(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def classification_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    label_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Headline and per-label metrics.

    Args:
        probs: (N, K) scores; binary K = 1 (positive class).
        targets: (N, L) label-space targets with NaN for unknown (binary/multiclass: one-hot over classes).
        task: binary, multiclass or multilabel.
        label_names: the label space's names.
        thresholds: per output column decision thresholds (binary/multilabel); default 0.5.

    Returns:
        A dict with ``auroc_macro``, ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro`` and
        ``per_label`` (AUROC, precision, recall, specificity, F1, TP/FP/TN/FN, support per label).

    Example:
        >>> m = classification_metrics(np.array([[.9], [.2]]), np.array([[0, 1], [1, 0]]), "binary", ["n", "p"])
        >>> m["auroc_macro"]
        1.0
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[:, None]
    per: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"n": int(len(probs))}
    if task in ("binary", "anomaly"):
        known = ~np.isnan(targets[:, 1])
        y = targets[known, 1] == 1
        s = probs[known, 0]
        thr = 0.5 if thresholds is None else float(thresholds[0])
        c = confusion(s >= thr, y)
        r = rates(c)
        auc = binary_auroc(s, y)
        name = label_names[1]
        per[name] = {"auroc": auc, **r, **c, "support": int(y.sum()), "threshold": thr}
        out.update({"auroc_macro": auc, "accuracy": r["accuracy"], "precision_macro": r["precision"],
                    "recall_macro": r["recall"], "f1_macro": r["f1"], "specificity_macro": r["specificity"]})
    elif task == "multiclass":
        known = ~np.isnan(targets).any(axis=1)
        y = targets[known].argmax(axis=1)
        p = probs[known]
        pred = p.argmax(axis=1)
        for j, name in enumerate(label_names):
            c = confusion(pred == j, y == j)
            per[name] = {"auroc": binary_auroc(p[:, j], y == j), **rates(c), **c, "support": int((y == j).sum())}
        out["accuracy"] = float(np.mean(pred == y)) if len(y) else float("nan")
        for m in ("auroc", "precision", "recall", "f1", "specificity"):
            out[f"{m}_macro"] = _macro([per[n][m] for n in label_names])
        out["confusion_matrix"] = np.bincount(y * len(label_names) + pred, minlength=len(label_names) ** 2).reshape(len(label_names), -1).tolist()
    elif task == "multilabel":
        thr = np.full(len(label_names), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        accs = []
        for j, name in enumerate(label_names):
            known = ~np.isnan(targets[:, j])
            y = targets[known, j] == 1
            s = probs[known, j]
            c = confusion(s >= thr[j], y)
            r = rates(c)
            accs.append(r["accuracy"])
            per[name] = {"auroc": binary_auroc(s, y), **r, **c, "support": int(y.sum()), "threshold": float(thr[j])}
        for m in ("auroc", "precision", "recall", "f1", "specificity"):
            out[f"{m}_macro"] = _macro([per[n][m] for n in label_names])
        out["accuracy"] = _macro(accs)
    else:
        raise ValueError(f"unknown task {task!r}")
    for name, d in per.items():
        if d["auroc"] == d["auroc"] and d["auroc"] < 0.5:
            log.warning("label %r has AUROC %.3f < 0.5: the score may be inverted", name, d["auroc"])
    out["per_label"] = {n: {k: (_nan_to_none(v) if isinstance(v, float) else v) for k, v in d.items()} for n, d in per.items()}
    return {k: (_nan_to_none(v) if isinstance(v, float) else v) for k, v in out.items()}


def best_threshold(scores: np.ndarray, y: np.ndarray, method: str = "f1") -> float:
    """Threshold on one label's scores maximising F1 or Youden's J (sensitivity + specificity - 1).

    Candidates are the midpoints between consecutive distinct scores, so the threshold generalises better than
    a score itself. Returns 0.5 when the label has only one class.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or (~y).all() or len(s) == 0:
        return 0.5
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]  # last index of each score value
    tp, fp = tp[distinct], fp[distinct]
    p, n = y.sum(), (~y).sum()
    if method == "youden":
        score = tp / p - fp / n
    elif method == "f1":
        score = 2 * tp / (2 * tp + (fp) + (p - tp))
    else:
        raise ValueError(f"unknown threshold method {method!r}; valid: f1, youden")
    k = int(np.argmax(score))
    hi = s_sorted[distinct[k]]
    lo = s_sorted[distinct[k + 1]] if k + 1 < len(distinct) else hi - 1e-6
    return float((hi + lo) / 2.0)


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, task: str, method: str = "f1") -> list[float]:
    """Per output column thresholds chosen on validation data (binary/multilabel; multiclass uses argmax)."""
    probs = np.asarray(probs, dtype=np.float64)
    if task in ("binary", "anomaly"):
        known = ~np.isnan(targets[:, 1])
        return [best_threshold(probs[known, 0], targets[known, 1] == 1, method)]
    if task == "multilabel":
        out = []
        for j in range(probs.shape[1]):
            known = ~np.isnan(targets[:, j])
            out.append(best_threshold(probs[known, j], targets[known, j] == 1, method))
        return out
    return []
