"""Metrics as pure functions over (probabilities, targets, mask). No torch, no I/O.

Conventions:
* ``probs``: (N, K) scores per output (binary: K = 1, the positive class; multiclass: softmax rows).
* ``targets``: (N, L) label-space targets, 0/1 with NaN for unknown (binary/multiclass: one-hot over classes).
* ``mask``: optional (N, L) bool, True = known; combined with ``~isnan(targets)``.
* A metric that is undefined (a label with no positives for AUROC, average precision and sensitivity; no
  predicted positives for precision; ...) is ``None`` in the output, never 0 or 1.
* A sample is predicted positive for a label when its score is ``>= threshold``.

Every scalar metric here agrees with scikit-learn (``roc_auc_score``, ``average_precision_score``,
``precision_recall_fscore_support(zero_division=np.nan)``, ``accuracy_score``, ``hamming_loss``) on the known
entries; ``tests/unit/test_metrics.py`` checks that on random inputs.

Averages over labels:
* ``macro``: the unweighted mean over labels where the metric is defined.
* ``micro``: one metric over all known (sample, label) entries pooled (counts summed; scores pooled for AUROC/AP).
* ``weighted``: the mean over labels where the metric is defined, weighted by each label's number of known
  positives (scikit-learn's ``average="weighted"``); undefined when those labels have no positives at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("medlens.metrics")

#: per-label rate metrics computed from confusion counts
RATE_METRICS = ("precision", "recall", "sensitivity", "specificity", "f1", "accuracy")
#: per-label ranking metrics computed from scores
RANK_METRICS = ("auroc", "average_precision")
#: metrics averaged over labels (macro, micro, weighted)
AVERAGED_METRICS = (*RANK_METRICS, *RATE_METRICS)
#: metrics where lower is better (the target check in reports uses this)
LOWER_IS_BETTER = frozenset({"ece", "mce", "brier", "loss", "hamming_loss"})


def _nan_to_none(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return None if math.isnan(v) else v
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------------------------ ranking
def binary_clf_curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at every distinct score, highest score first.

    Args:
        scores: (N,) scores; higher means more likely positive.
        y: (N,) 0/1 or bool truth.

    Returns:
        ``(fps, tps, thresholds)``: counts of negatives/positives with ``score >= thresholds[i]``.

    Example:
        >>> fps, tps, thr = binary_clf_curve(np.array([.9, .4, .4, .1]), np.array([1, 0, 1, 0]))
        >>> tps.tolist(), fps.tolist(), thr.tolist()
        ([1, 2, 2], [0, 1, 2], [0.9, 0.4, 0.1])
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    yb = np.asarray(y).astype(bool).ravel()
    if s.shape != yb.shape:
        raise ValueError(f"scores have {s.shape[0]} values but targets {yb.shape[0]}")
    order = np.argsort(-s, kind="mergesort")
    s, yb = s[order], yb[order]
    if len(s) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), s
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)  # last index of each distinct score
    tps = np.cumsum(yb)[last]
    fps = last + 1 - tps
    return fps, tps, s[last]


def _rank_metrics(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(AUROC, average precision) from one sort; NaN where undefined."""
    fps, tps, _ = binary_clf_curve(scores, y)
    if len(tps) == 0 or tps[-1] == 0:
        return float("nan"), float("nan")
    recall = tps / tps[-1]
    ap = float(np.sum(np.diff(recall, prepend=0.0) * (tps / (tps + fps))))
    if fps[-1] == 0:
        return float("nan"), ap
    tpr = np.concatenate(([0.0], recall))
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0), ap


def roc_points(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` starting at (0, 0); empty arrays if one class is absent.

    Example:
        >>> fpr, tpr, _ = roc_points(np.array([.9, .1]), np.array([1, 0]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    """
    fps, tps, thr = binary_clf_curve(scores, y)
    if len(tps) == 0 or tps[-1] == 0 or fps[-1] == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thr]


def pr_points(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve ``(recall, precision, thresholds)`` from the highest threshold down.

    The first point is (recall 0, precision 1), as in scikit-learn. Empty arrays if there are no positives.

    Example:
        >>> r, p, _ = pr_points(np.array([.9, .5, .1]), np.array([1, 0, 1]))
        >>> r.tolist(), [round(float(v), 3) for v in p]
        ([0.0, 0.5, 0.5, 1.0], [1.0, 1.0, 0.5, 0.667])
    """
    fps, tps, thr = binary_clf_curve(scores, y)
    if len(tps) == 0 or tps[-1] == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.r_[0.0, tps / tps[-1]], np.r_[1.0, tps / (tps + fps)], np.r_[np.inf, thr]


def binary_auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN if one class is absent.

    Example:
        >>> binary_auroc(np.array([.9, .4, .4, .1]), np.array([1, 0, 1, 0]))
        0.875
    """
    return _rank_metrics(scores, y)[0]


def average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, no interpolation; NaN without positives.

    Example:
        >>> round(average_precision(np.array([.9, .5, .1]), np.array([1, 0, 1])), 4)
        0.8333
    """
    return _rank_metrics(scores, y)[1]


# ------------------------------------------------------------------------------------------ counts
def confusion(pred: np.ndarray, y: np.ndarray) -> dict[str, int]:
    """TP/FP/TN/FN counts of boolean predictions against 0/1 truth.

    Example:
        >>> confusion(np.array([1, 1, 0]), np.array([1, 0, 0]))
        {'tp': 1, 'fp': 1, 'tn': 1, 'fn': 0}
    """
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
    """Precision (= PPV), recall (= sensitivity), specificity, NPV, F1 and accuracy from confusion counts (NaN if undefined).

    Example:
        >>> rates({"tp": 1, "fp": 1, "tn": 1, "fn": 0})["precision"]
        0.5
    """
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    recall = _safe_div(tp, tp + fn)
    return {
        "precision": _safe_div(tp, tp + fp),
        "recall": recall,
        "sensitivity": recall,
        "specificity": _safe_div(tn, tn + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
    }


#: z of a two-sided 95% normal interval
_Z95 = 1.959963984540054
#: a label whose positives are fewer than this, or come from fewer than MIN_POSITIVE_GROUPS patients, gets a warning
MIN_POSITIVES = 10
MIN_POSITIVE_GROUPS = 3


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """Wilson score interval of a proportion k/n (Wilson, 1927): valid at small n and at k = 0 or k = n.

    ``low, high = (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = k/n``; undefined
    (``None``) when n = 0.

    Example:
        >>> w = wilson_interval(5, 5)
        >>> round(w["low"], 4), w["high"], w["k"], w["n"]
        (0.5655, 1.0, 5, 5)
    """
    from statistics import NormalDist

    k, n = int(k), int(n)
    if n <= 0:
        return {"estimate": None, "low": None, "high": None, "k": k, "n": n, "confidence": float(confidence)}
    z = _Z95 if confidence == 0.95 else NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)  # exact ends (rounding leaves ~1e-17 otherwise)
    high = 1.0 if k == n else min(1.0, center + half)
    return {"estimate": p, "low": low, "high": high, "k": k, "n": n, "confidence": float(confidence)}


def wilson_rates(c: dict[str, int], confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """Wilson intervals of sensitivity (TP / P), specificity (TN / N), PPV (TP / predicted positive) and NPV
    (TN / predicted negative) from confusion counts.

    Example:
        >>> w = wilson_rates({"tp": 4, "fp": 1, "tn": 9, "fn": 1})
        >>> w["sensitivity"]["k"], w["sensitivity"]["n"], w["npv"]["n"]
        (4, 5, 10)
    """
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "sensitivity": wilson_interval(tp, tp + fn, confidence), "specificity": wilson_interval(tn, tn + fp, confidence),
        "ppv": wilson_interval(tp, tp + fp, confidence), "npv": wilson_interval(tn, tn + fn, confidence),
    }


def _macro(values: Sequence[float | None]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _weighted(values: Sequence[float | None], weights: Sequence[float]) -> float:
    pairs = [(x, w) for x, w in zip(values, weights, strict=True) if x is not None and not math.isnan(x)]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return float("nan")
    return float(sum(x * w for x, w in pairs) / total)


def group_codes(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """An integer group code per row; rows without a group (``None``/NaN/'') get a code of their own.

    Example:
        >>> group_codes(["a", "b", "a", None], 4).tolist()
        [0, 1, 0, 2]
    """
    if groups is None:
        return np.arange(n)
    g = list(groups)
    if len(g) != n:
        raise ValueError(f"{len(g)} groups for {n} samples")
    codes = np.empty(n, dtype=np.int64)
    seen: dict[str, int] = {}
    for i, x in enumerate(g):
        if x is None or (isinstance(x, float) and x != x) or str(x) == "":
            key = f"\0row{i}"  # cannot collide with a real id
        else:
            key = str(x)
        codes[i] = seen.setdefault(key, len(seen))
    return codes


# ------------------------------------------------------------------------------------------ layout
def label_view(
    probs: np.ndarray, targets: np.ndarray, task: str, label_names: Sequence[str], mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Scores, 0/1 truth, known-mask and names per *scored* label column.

    Binary: one column (the positive class, ``label_names[1]``). Multiclass: one column per class, a row is known
    only when its whole target row is. Multi-label: one column per label.

    Example:
        >>> s, y, m, names = label_view(np.array([[.8], [.3]]), np.array([[0., 1.], [1., 0.]]), "binary", ["n", "p"])
        >>> names, y[:, 0].tolist()
        (['p'], [1.0, 0.0])
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if t.ndim == 1:
        t = t[:, None]
    if len(p) != len(t):
        raise ValueError(f"probs have {len(p)} rows but targets {len(t)}")
    known = ~np.isnan(t)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != t.shape:
            raise ValueError(f"mask shape {m.shape} != targets shape {t.shape}")
        known &= m
    names = list(label_names)
    if task in ("binary", "anomaly"):
        if t.shape[1] != 2 or p.shape[1] != 1:
            raise ValueError(f"binary task: expected probs (N, 1) and targets (N, 2), got {p.shape} and {t.shape}")
        return p[:, :1], np.nan_to_num(t[:, 1:2]), known[:, 1:2], [names[1]]
    if p.shape != t.shape or t.shape[1] != len(names):
        raise ValueError(f"{task} task: probs {p.shape}, targets {t.shape} and {len(names)} label names disagree")
    if task == "multiclass":
        row = known.all(axis=1, keepdims=True)
        return p, np.nan_to_num(t), np.repeat(row, t.shape[1], axis=1), names
    if task == "multilabel":
        return p, np.nan_to_num(t), known, names
    raise ValueError(f"unknown task {task!r}; valid: binary, multiclass, multilabel")


def predictions(scores: np.ndarray, task: str, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Boolean decisions per scored column: ``score >= threshold`` (default 0.5); multiclass: one-hot argmax.

    Example:
        >>> predictions(np.array([[.2, .7], [.6, .1]]), "multilabel", [.5, .5]).tolist()
        [[False, True], [True, False]]
    """
    s = np.asarray(scores, dtype=np.float64)
    if task == "multiclass":
        out = np.zeros(s.shape, dtype=bool)
        if len(s):
            out[np.arange(len(s)), s.argmax(axis=1)] = True
        return out
    thr = np.full(s.shape[1], 0.5) if thresholds is None or len(thresholds) == 0 else np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (s.shape[1],):
        raise ValueError(f"{len(thr)} thresholds for {s.shape[1]} outputs")
    return s >= thr[None, :]


# ------------------------------------------------------------------------------------------ main
def classification_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    label_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
    calibration: bool = True,
    warn: bool = True,
    groups: Sequence[Any] | np.ndarray | None = None,
    intervals: bool = True,
) -> dict[str, Any]:
    """Headline and per-label metrics.

    Args:
        probs: (N, K) scores; binary K = 1 (positive class).
        targets: (N, L) label-space targets with NaN for unknown (binary/multiclass: one-hot over classes).
        task: binary, multiclass or multilabel.
        label_names: the label space's names.
        thresholds: per output column decision thresholds (binary/multilabel); default 0.5.
        mask: optional (N, L) bool, True where the target is known.
        calibration: also compute expected calibration error and Brier score.
        warn: log a warning for labels with AUROC < 0.5 (the score may be inverted).
        groups: one patient/exam id per row (None: none); counts the patients behind each label's positives.
        intervals: add 95% Wilson score intervals (``per_label[label]["wilson"]``, pooled ones in ``wilson``).

    Returns:
        A flat dict of headline metrics -- ``auroc_macro``, ``accuracy``, and ``<metric>_<macro|micro|weighted>``
        for every metric in :data:`AVERAGED_METRICS`; summed ``tp``/``fp``/``tn``/``fn``; ``exact_match`` and
        ``hamming_accuracy`` (multi-label); ``confusion_matrix`` (binary, multiclass); ``ece``/``brier`` -- plus
        ``per_label`` (every metric and TP/FP/TN/FN, support, threshold per label; ``wilson``: sensitivity,
        specificity, PPV and NPV as ``{"estimate", "low", "high", "k", "n"}``; ``positive_groups`` when groups
        are given), ``wilson`` (the same from the counts summed over labels, plus accuracy for binary and
        multiclass) and ``warnings`` (strings; among them every label with fewer than 10 positives or with
        positives from fewer than 3 patients, whose bootstrap intervals cannot vary). Undefined values are ``None``.

    Example:
        >>> m = classification_metrics(np.array([[.9], [.2]]), np.array([[0, 1], [1, 0]]), "binary", ["n", "p"])
        >>> m["auroc_macro"], m["per_label"]["p"]["tp"]
        (1.0, 1)
    """
    s, y, known, names = label_view(probs, targets, task, label_names, mask)
    yb = y > 0.5
    pred = predictions(s, task, thresholds)
    thr_list = None if task == "multiclass" else (
        [0.5] * s.shape[1] if thresholds is None or len(thresholds) == 0 else [float(t) for t in thresholds])
    gcodes = None if groups is None else group_codes(groups, len(s))
    per, total, warnings = _per_label(s, yb, known, pred, names, thr_list, gcodes, intervals, warn)
    out: dict[str, Any] = {"task": task, "n": int(known.any(axis=1).sum()) if known.size else 0}
    out.update(_averaged(per, names, total, s, yb, known))
    out.update(_kind_metrics(task, s, y, yb, known, pred, per[names[0]], out))
    if intervals:  # pooled over labels (binary: the one label); multiclass/binary also accuracy
        out["wilson"] = _pooled_wilson(task, s, y, known, total)
    if calibration:  # the same definitions as medlens.calibration, on the arrays already at hand
        out.update(_calibration(task, s, y, known))
    out["per_label"] = {n: {k: _nan_to_none(v) for k, v in d.items()} for n, d in per.items()}
    out["warnings"] = warnings
    return {k: _nan_to_none(v) for k, v in out.items()}


def _per_label(s: np.ndarray, yb: np.ndarray, known: np.ndarray, pred: np.ndarray, names: Sequence[str], thr_list: list[float] | None,
               gcodes: np.ndarray | None, intervals: bool, warn: bool) -> tuple[dict[str, dict[str, Any]], dict[str, int], list[str]]:
    """Step 1: every metric of each label (confusion counts of all labels at once, over known entries), the counts
    summed over labels, and the warnings (small samples, missing classes, AUROC below 0.5)."""
    per: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    total = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    counts = {
        "tp": (pred & yb & known).sum(axis=0), "fp": (pred & ~yb & known).sum(axis=0),
        "tn": (~pred & ~yb & known).sum(axis=0), "fn": (~pred & yb & known).sum(axis=0),
    }
    for j, name in enumerate(names):
        k = known[:, j]
        c = {key: int(v[j]) for key, v in counts.items()}
        for key in total:
            total[key] += c[key]
        auc, ap = _rank_metrics(s[k, j], yb[k, j])
        n_known, n_pos = c["tp"] + c["fp"] + c["tn"] + c["fn"], c["tp"] + c["fn"]
        d: dict[str, Any] = {
            "auroc": auc,
            "average_precision": ap,
            **rates(c), **c,
            "support": n_pos, "negatives": n_known - n_pos, "n": n_known,
            "prevalence": _safe_div(float(n_pos), float(n_known)),
        }
        if thr_list is not None:
            d["threshold"] = thr_list[j]
        if intervals:
            d["wilson"] = wilson_rates(c)
        pos_groups = None
        if gcodes is not None:
            pos_groups = len(set(gcodes[k & yb[:, j]].tolist()))
            d["positive_groups"] = pos_groups
        d["small_sample"] = n_pos > 0 and (n_pos < MIN_POSITIVES or (pos_groups is not None and pos_groups < MIN_POSITIVE_GROUPS))
        warnings += _label_warnings(name, d, pos_groups, warn)
        per[name] = d
    return per, total, warnings


def _label_warnings(name: str, d: dict[str, Any], pos_groups: int | None, warn: bool) -> list[str]:
    out = []
    n_pos = d["support"]
    if d["small_sample"]:
        src = "" if pos_groups is None else f" from {pos_groups} patient(s)/group(s)"
        out.append(f"label {name!r} has {n_pos} positive(s){src}: too few for the bootstrap to vary "
                   f"(needs >= {MIN_POSITIVES} positives from >= {MIN_POSITIVE_GROUPS} patients); rely on the Wilson intervals")
    if n_pos == 0:
        out.append(f"label {name!r} has no positives among {d['n']} known samples: AUROC, average precision and sensitivity are undefined")
    elif d["negatives"] == 0:
        out.append(f"label {name!r} has no negatives among {d['n']} known samples: AUROC and specificity are undefined")
    auc = d["auroc"]
    if auc == auc and auc < 0.5:
        out.append(f"label {name!r} has AUROC {auc:.3f} < 0.5: the score may be inverted")
        if warn:
            log.warning("label %r has AUROC %.3f < 0.5: the score may be inverted", name, auc)
    return out


def _averaged(per: dict[str, dict[str, Any]], names: Sequence[str], total: dict[str, int], s: np.ndarray, yb: np.ndarray,
              known: np.ndarray) -> dict[str, Any]:
    """Step 2: macro and support-weighted means over labels, micro rates from the summed counts, micro AUROC/AP."""
    out: dict[str, Any] = {}
    supports = [per[n]["support"] for n in names]
    for m in AVERAGED_METRICS:
        vals = [per[n][m] for n in names]
        out[f"{m}_macro"] = _macro(vals)
        out[f"{m}_weighted"] = _weighted(vals, supports)
    micro = rates(total)
    for m in RATE_METRICS:
        out[f"{m}_micro"] = micro[m]
    out["auroc_micro"], out["average_precision_micro"] = _rank_metrics(s[known], yb[known])
    out.update(total)
    return out


def _kind_metrics(task: str, s: np.ndarray, y: np.ndarray, yb: np.ndarray, known: np.ndarray, pred: np.ndarray,
                  first: dict[str, Any], averaged: dict[str, Any]) -> dict[str, Any]:
    """Step 3: accuracy and the confusion matrix (binary, multiclass), or exact match and Hamming accuracy (multi-label)."""
    out: dict[str, Any] = {}
    if task == "multiclass":
        rows = known[:, 0]
        yt = y[rows].argmax(axis=1)
        yp = s[rows].argmax(axis=1)
        out["accuracy"] = float(np.mean(yp == yt)) if len(yt) else float("nan")
        kk = y.shape[1]
        out["confusion_matrix"] = np.bincount(yt * kk + yp, minlength=kk * kk).reshape(kk, kk).tolist()
    elif task == "multilabel":
        out["accuracy"] = averaged["accuracy_macro"]
        out["hamming_accuracy"] = averaged["accuracy_micro"]
        rows = known.any(axis=1)
        agree = (pred == yb) | ~known
        out["exact_match"] = float(np.mean(agree[rows].all(axis=1))) if rows.any() else float("nan")
    else:
        out["accuracy"] = first["accuracy"]
        out["confusion_matrix"] = [[first["tn"], first["fp"]], [first["fn"], first["tp"]]]
    return out


def _pooled_wilson(task: str, s: np.ndarray, y: np.ndarray, known: np.ndarray, total: dict[str, int]) -> dict[str, Any]:
    """Step 4: Wilson intervals from the counts summed over labels (and of accuracy, binary and multiclass)."""
    out = wilson_rates(total)
    if task == "multiclass":
        rows = known[:, 0]
        out["accuracy"] = wilson_interval(int(np.sum(s[rows].argmax(axis=1) == y[rows].argmax(axis=1))), int(rows.sum()))
    elif task != "multilabel":
        out["accuracy"] = wilson_interval(total["tp"] + total["tn"], sum(total.values()))
    return out


def _calibration(task: str, s: np.ndarray, y: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """Step 5: expected calibration error and Brier score (top label for multiclass, pooled known labels otherwise)."""
    if task == "multiclass":
        rows = known[:, 0]
        sr, yr = s[rows], y[rows]
        return {"ece": ece_from_pairs(sr.max(axis=1), (sr.argmax(axis=1) == yr.argmax(axis=1)).astype(float)) if rows.any() else float("nan"),
                "brier": float(np.mean(np.sum((sr - yr) ** 2, axis=1))) if rows.any() else float("nan")}
    return {"ece": ece_from_pairs(s[known], y[known]),
            "brier": float(np.mean((s[known] - y[known]) ** 2)) if known.any() else float("nan")}


# ------------------------------------------------------------------------------------------ thresholds
def _cut_points(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Per distinct score (descending): tp, fp when predicting ``score >= it`` positive, the midpoint cut, P, N."""
    y = np.asarray(y).astype(bool)
    fps, tps, thr = binary_clf_curve(scores, y)
    nxt = np.r_[thr[1:], thr[-1] - 1e-6] if len(thr) else thr  # the next lower score (or just below the lowest)
    cut = (thr + nxt) / 2.0
    cut = np.where(cut > nxt, cut, thr)  # adjacent floats: fall back to the score itself (still >= it)
    return tps, fps, cut, int(y.sum()), int((~y).sum())


def _operating_point(tp: int, fp: int, p: int, n: int, threshold: float) -> dict[str, float | None]:
    r = rates({"tp": int(tp), "fp": int(fp), "tn": int(n - fp), "fn": int(p - tp)})
    return {
        "threshold": float(threshold), "sensitivity": _nan_to_none(r["sensitivity"]),
        "specificity": _nan_to_none(r["specificity"]), "precision": _nan_to_none(r["precision"]),
        "f1": _nan_to_none(r["f1"]), "youden_j": _nan_to_none(r["sensitivity"] + r["specificity"] - 1.0),
    }


def threshold_sweep(scores: np.ndarray, y: np.ndarray, required_sensitivity: float = 0.9) -> dict[str, Any]:
    """Operating points of one label: max F1, max Youden's J, and the highest threshold with a required sensitivity.

    Candidate thresholds are midpoints between consecutive distinct scores (a threshold that is not itself a
    score generalises better). Each point gives threshold, sensitivity, specificity, precision, F1 and J.
    All three are ``None`` when the label lacks positives or negatives.

    Example:
        >>> sw = threshold_sweep(np.array([.9, .8, .3, .1]), np.array([1, 1, 0, 0]))
        >>> sw["max_f1"]["threshold"], sw["youden"]["youden_j"]
        (0.55, 1.0)
    """
    if not 0.0 < required_sensitivity <= 1.0:
        raise ValueError(f"required_sensitivity must be in (0, 1], not {required_sensitivity}")
    tps, fps, cut, p, n = _cut_points(scores, y)
    out: dict[str, Any] = {"required_sensitivity": float(required_sensitivity), "max_f1": None, "youden": None, "sensitivity": None}
    if p == 0 or n == 0:
        return out
    f1 = 2 * tps / (2 * tps + fps + (p - tps))
    j = tps / p - fps / n
    k_f1, k_j = int(np.argmax(f1)), int(np.argmax(j))
    # sensitivity never decreases as the threshold falls: the first cut reaching the target keeps the most specificity
    ok = np.flatnonzero(tps / p >= required_sensitivity - 1e-12)
    k_s = int(ok[0])
    out["max_f1"] = _operating_point(tps[k_f1], fps[k_f1], p, n, cut[k_f1])
    out["youden"] = _operating_point(tps[k_j], fps[k_j], p, n, cut[k_j])
    out["sensitivity"] = _operating_point(tps[k_s], fps[k_s], p, n, cut[k_s])
    return out


def sweep_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    label_names: Sequence[str],
    required_sensitivity: float = 0.9,
    mask: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`threshold_sweep` for every scored label (binary: the positive class; multiclass: one-vs-rest).

    Example:
        >>> sw = sweep_thresholds(np.array([[.9], [.2]]), np.array([[0, 1], [1, 0]]), "binary", ["n", "p"])
        >>> sw["p"]["youden"]["sensitivity"]
        1.0
    """
    s, y, known, names = label_view(probs, targets, task, label_names, mask)
    return {n: threshold_sweep(s[known[:, j], j], y[known[:, j], j] > 0.5, required_sensitivity) for j, n in enumerate(names)}


def best_threshold(scores: np.ndarray, y: np.ndarray, method: str = "f1", required_sensitivity: float = 0.9) -> float:
    """Threshold on one label's scores maximising F1 or Youden's J, or reaching a required sensitivity.

    Args:
        scores: (N,) scores.
        y: (N,) 0/1 truth.
        method: ``f1``, ``youden`` or ``sensitivity`` (the highest threshold with sensitivity >= required).
        required_sensitivity: the target for ``method="sensitivity"``.

    Returns:
        The threshold (a midpoint between distinct scores); 0.5 when the label has only one class.

    Example:
        >>> best_threshold(np.array([.9, .8, .3, .1]), np.array([1, 1, 0, 0]), "youden")
        0.55
    """
    if method not in ("f1", "youden", "sensitivity"):
        raise ValueError(f"unknown threshold method {method!r}; valid: f1, youden, sensitivity")
    sw = threshold_sweep(scores, y, required_sensitivity)
    key = {"f1": "max_f1", "youden": "youden", "sensitivity": "sensitivity"}[method]
    return 0.5 if sw[key] is None else float(sw[key]["threshold"])


def tune_thresholds(
    probs: np.ndarray, targets: np.ndarray, task: str, method: str = "f1", required_sensitivity: float = 0.9
) -> list[float]:
    """Per output column thresholds chosen on validation data (binary/multilabel; multiclass uses argmax).

    Example:
        >>> tune_thresholds(np.array([[.9], [.2]]), np.array([[0, 1], [1, 0]]), "binary")
        [0.55]
    """
    if task not in ("binary", "anomaly", "multilabel"):
        return []
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    names = [str(i) for i in range(t.shape[1])]
    s, y, known, _ = label_view(p, t, task, names)
    return [best_threshold(s[known[:, j], j], y[known[:, j], j] > 0.5, method, required_sensitivity) for j in range(s.shape[1])]


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """Look up a headline metric (``auroc_macro``) or a per-label one (``auroc/Effusion``) in a metrics dict.

    Example:
        >>> metric_value({"auroc_macro": 0.9, "per_label": {"E": {"auroc": 0.8}}}, "auroc/E")
        0.8
    """
    if "/" in name:
        metric, label = name.split("/", 1)
        v = metrics.get("per_label", {}).get(label, {}).get(metric)
    else:
        v = metrics.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def bin_ids(conf: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], conf)  # bins (lo, hi], the first [0, hi]


def ece_from_pairs(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15) -> float:
    """ECE of flattened (confidence, 0/1 outcome) pairs (NaN when empty); the fast core of the functions below.

    Example:
        >>> ece_from_pairs(np.array([.9, .8, .1]), np.array([1., 0., 0.]), 2)
        0.2666666666666667
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(outcome, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    ids = bin_ids(conf, n_bins)
    gap = np.abs(np.bincount(ids, weights=hit, minlength=n_bins) - np.bincount(ids, weights=conf, minlength=n_bins))
    return float(gap.sum() / len(conf))  # sum_b n_b |acc_b - conf_b| / N, with n_b * acc_b = sum of outcomes
