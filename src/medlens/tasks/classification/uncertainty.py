"""Bootstrap confidence intervals for every headline and per-label metric, and bands around ROC/PR curves.

Images of one patient are not independent: a patient with five studies counts once, not five times, towards
how sure we can be. When samples carry a group (patient/exam id), :func:`bootstrap_ci` therefore resamples
**groups** with replacement and takes every row of each drawn group (the cluster bootstrap); rows without a
group are their own group. Without groups it resamples rows.

Intervals are percentile intervals over the replicates where a metric is defined (a replicate may draw no
positive of a rare label; its AUROC is then undefined and skipped). ``n_valid`` says how many replicates
counted; a CI from fewer than ``min_valid`` replicates is reported as undefined.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medlens.tasks.classification.metrics import (
    classification_metrics,
    confusion,
    group_codes,
    label_view,
    pr_points,
    predictions,
    rates,
    roc_points,
)

log = logging.getLogger("medlens.uncertainty")

#: headline metrics that get a CI when the metrics dict has them (in report order)
HEADLINE_METRICS = (
    "auroc_macro", "average_precision_macro", "sensitivity_macro", "specificity_macro", "precision_macro",
    "f1_macro", "accuracy", "auroc_micro", "f1_micro", "auroc_weighted", "exact_match", "hamming_accuracy",
    "ece", "brier",
)
#: per-label metrics that get a CI
LABEL_METRICS = ("auroc", "average_precision", "sensitivity", "specificity", "precision", "f1")


def bootstrap_indices(
    groups: Sequence[Any] | np.ndarray | None, n: int, n_boot: int, seed: int = 0
) -> Iterator[np.ndarray]:
    """Row indices of each bootstrap replicate: whole groups drawn with replacement (rows when no groups).

    A group drawn k times contributes all its rows k times. Rows come sorted, so a replicate's order says
    nothing about the draw order.

    Example:
        >>> reps = list(bootstrap_indices(["p1", "p1", "p2"], 3, n_boot=2, seed=0))
        >>> all(set(r[r < 2].tolist()) in (set(), {0, 1}) for r in reps)  # p1's two rows travel together
        True
    """
    codes = group_codes(groups, n)
    n_groups = int(codes.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    for _ in range(n_boot):
        draws = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups) if n_groups else np.zeros(0, int)
        yield np.repeat(rows, draws[codes])


def _interval(values: list[float], confidence: float, min_valid: int) -> tuple[float | None, float | None]:
    if len(values) < min_valid:
        return None, None
    a = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [a, 100.0 - a])
    return float(lo), float(hi)


def bootstrap_ci(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    label_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] = HEADLINE_METRICS,
    label_metrics: Sequence[str] = LABEL_METRICS,
    mask: np.ndarray | None = None,
    min_valid: int = 20,
) -> dict[str, Any]:
    """Percentile bootstrap CIs for headline and per-label metrics, resampling groups when given.

    Args:
        probs: (N, K) scores as for :func:`medlens.tasks.classification.metrics.classification_metrics`.
        targets: (N, L) targets with NaN unknown.
        task: binary, multiclass or multilabel.
        label_names: label names.
        thresholds: decision thresholds (the bundle's).
        groups: one patient/exam id per row, or None to resample rows.
        n_boot: number of replicates.
        confidence: e.g. 0.95 for a 95% interval.
        seed: replicate seed (the result is deterministic for a seed).
        metrics: headline metric names (those absent from the point metrics are skipped).
        label_metrics: per-label metric names.
        mask: optional known-mask (N, L).
        min_valid: fewer valid replicates than this gives an undefined interval.

    Returns:
        ``{"headline": {metric: {"value", "low", "high", "n_valid"}}, "per_label": {label: {metric: {...}}},
        "n_boot", "confidence", "unit" ("group" or "sample"), "n_units", "seed"}``.

    Example:
        >>> ci = bootstrap_ci(probs, targets, "multilabel", names, groups=patient_ids, n_boot=1000)  # doctest: +SKIP
        >>> ci["headline"]["auroc_macro"]  # doctest: +SKIP
        {'value': 0.81, 'low': 0.76, 'high': 0.86, 'n_valid': 1000}
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, not {n_boot}")
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    m = None if mask is None else np.asarray(mask, dtype=bool)
    n = len(p)
    point = classification_metrics(p, t, task, label_names, thresholds, mask=m, warn=False, intervals=False)
    head = [k for k in metrics if isinstance(point.get(k), (int, float)) or (k in point and point[k] is None)]
    labels = list(point["per_label"])
    samples_h: dict[str, list[float]] = {k: [] for k in head}
    samples_l: dict[str, dict[str, list[float]]] = {lb: {k: [] for k in label_metrics} for lb in labels}
    for idx in bootstrap_indices(groups, n, n_boot, seed):
        r = classification_metrics(p[idx], t[idx], task, label_names, thresholds, mask=None if m is None else m[idx], warn=False,
                                   intervals=False)
        for k in head:
            v = r.get(k)
            if v is not None:
                samples_h[k].append(v)
        for lb in labels:
            d = r["per_label"][lb]
            for k in label_metrics:
                v = d.get(k)
                if v is not None:
                    samples_l[lb][k].append(v)

    def entry(value: Any, vals: list[float]) -> dict[str, Any]:
        lo, hi = _interval(vals, confidence, min_valid) if value is not None else (None, None)
        return {"value": value, "low": lo, "high": hi, "n_valid": len(vals)}

    codes = group_codes(groups, n)
    return {
        "method": "percentile bootstrap",
        "n_boot": int(n_boot),
        "confidence": float(confidence),
        "unit": "sample" if groups is None else "group",
        "n_units": int(codes.max()) + 1 if n else 0,
        "n_samples": int(n),
        "seed": int(seed),
        "headline": {k: entry(point.get(k), samples_h[k]) for k in head},
        "per_label": {lb: {k: entry(point["per_label"][lb].get(k), samples_l[lb][k]) for k in label_metrics} for lb in labels},
    }


# ------------------------------------------------------------------------------------------ curve bands
def roc_at(fpr_grid: np.ndarray, scores: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """TPR of one label at each FPR of the grid: the best TPR among the curve's thresholds with FPR <= f
    (the achievable ROC step function); None when one class is absent.

    Example:
        >>> roc_at(np.array([0.0, 0.5, 1.0]), np.array([.9, .6, .4, .1]), np.array([1, 0, 1, 0])).tolist()
        [0.5, 1.0, 1.0]
    """
    fpr, tpr, _ = roc_points(scores, y)
    if not len(fpr):
        return None
    return tpr[np.searchsorted(fpr, fpr_grid, side="right") - 1]


def pr_at(recall_grid: np.ndarray, scores: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Interpolated precision of one label at each recall of the grid: the best precision among the curve's
    thresholds with recall >= r; None without positives.

    Example:
        >>> pr_at(np.array([0.5, 1.0]), np.array([.9, .5, .1]), np.array([1, 0, 1])).tolist()
        [1.0, 0.6666666666666666]
    """
    rec, prec, _ = pr_points(scores, y)
    if not len(rec):
        return None
    best = np.maximum.accumulate(prec[::-1])[::-1]  # best precision from each point on (recall never decreases)
    idx = np.minimum(np.searchsorted(rec, recall_grid, side="left"), len(rec) - 1)
    return best[idx]


def curve_bands(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    label_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    grid_size: int = 101,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Bootstrap bands of the ROC and PR curves and the deployed operating point, per scored label.

    The ROC band is the percentile band of TPR at a fixed FPR grid (:func:`roc_at`) over bootstrap replicates;
    the PR band that of interpolated precision at a fixed recall grid (:func:`pr_at`). Replicates resample
    patients/groups when ``groups`` is given (as :func:`bootstrap_ci`). A replicate lacking a class for a label
    is skipped for it. The operating point is where the deployed decisions sit: (FPR, TPR) and (recall,
    precision) of ``score >= threshold`` (multiclass: arg-max one-vs-rest).

    Returns:
        ``{"grid": [...], "confidence", "n_boot", "unit", "labels": {label: {"roc": {"tpr", "low", "high"} |
        None, "pr": {"precision", "low", "high"} | None, "n_valid": {"roc", "pr"}, "operating_point":
        {"threshold", "fpr", "tpr", "recall", "precision"}}}}`` (lists, JSON-ready).

    Example:
        >>> b = curve_bands(probs, targets, "binary", ["normal", "pneumonia"], [0.4], n_boot=200)  # doctest: +SKIP
        >>> b["labels"]["pneumonia"]["operating_point"]["fpr"]  # doctest: +SKIP
    """
    s, y, known, names = label_view(probs, targets, task, label_names, mask)
    yb = y > 0.5
    pred = predictions(s, task, thresholds)
    grid = np.linspace(0.0, 1.0, grid_size)
    a = (1.0 - confidence) / 2.0 * 100.0
    n = len(s)
    point_roc = [roc_at(grid, s[known[:, j], j], yb[known[:, j], j]) for j in range(len(names))]
    point_pr = [pr_at(grid, s[known[:, j], j], yb[known[:, j], j]) for j in range(len(names))]
    reps_roc: list[list[np.ndarray]] = [[] for _ in names]
    reps_pr: list[list[np.ndarray]] = [[] for _ in names]
    for idx in bootstrap_indices(groups, n, n_boot, seed):
        for j in range(len(names)):
            k = known[idx, j]
            sj, yj = s[idx, j][k], yb[idx, j][k]
            r = roc_at(grid, sj, yj)
            if r is not None:
                reps_roc[j].append(r)
            q = pr_at(grid, sj, yj)
            if q is not None:
                reps_pr[j].append(q)

    def band(point: np.ndarray | None, reps: list[np.ndarray], key: str) -> dict[str, list[float]] | None:
        if point is None:
            return None
        if len(reps) < 2:
            return {key: point.tolist(), "low": None, "high": None}
        lo, hi = np.percentile(np.stack(reps), [a, 100.0 - a], axis=0)
        return {key: point.tolist(), "low": lo.tolist(), "high": hi.tolist()}

    labels: dict[str, Any] = {}
    for j, name in enumerate(names):
        k = known[:, j]
        c = confusion(pred[k, j], yb[k, j])
        r = rates(c)
        labels[name] = {
            "roc": band(point_roc[j], reps_roc[j], "tpr"), "pr": band(point_pr[j], reps_pr[j], "precision"),
            "n_valid": {"roc": len(reps_roc[j]), "pr": len(reps_pr[j])},
            "operating_point": {
                "threshold": None if task == "multiclass" else float(pred_threshold(thresholds, j)),
                "fpr": None if r["specificity"] != r["specificity"] else 1.0 - r["specificity"],
                "tpr": None if r["recall"] != r["recall"] else r["recall"],
                "recall": None if r["recall"] != r["recall"] else r["recall"],
                "precision": None if r["precision"] != r["precision"] else r["precision"],
            },
        }
    return {"grid": grid.tolist(), "confidence": float(confidence), "n_boot": int(n_boot),
            "unit": "sample" if groups is None else "group", "labels": labels}


def pred_threshold(thresholds: Sequence[float] | None, j: int) -> float:
    """The decision threshold of output ``j`` (0.5 when none are given, as :func:`predictions`)."""
    return 0.5 if thresholds is None or len(thresholds) == 0 else float(thresholds[j])
