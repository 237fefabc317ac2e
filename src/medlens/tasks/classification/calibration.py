"""Calibration: temperature scaling fitted on validation logits, expected calibration error, reliability bins.

Temperature scaling (Guo et al., 2017) divides logits by T > 0 chosen to minimise the validation negative
log-likelihood: one scalar for binary and multiclass models, one T per label for multi-label models
(:func:`fit_temperatures`; the manifest's ``temperature`` is then a list, divided column-wise). It changes confidence, not ranking: AUROC is unchanged, and for binary/multi-label
models a threshold on probabilities moves with it (thresholds are tuned after calibration). Training stores T
in the bundle manifest (``temperature``); :class:`medlens.inference.Predictor` applies it unless built with
``calibrated=False`` (``--uncalibrated`` on the command line).

Reliability is measured on the same entries the metrics use:

* binary / multi-label: every known (sample, label) pair is one probability of "positive"; a bin's accuracy
  is the fraction of its pairs that are positive.
* multiclass: top-label calibration -- the confidence is the largest class probability, and a bin's accuracy
  is the fraction of its samples whose argmax is right.

Bins are ``n_bins`` equal-width intervals of [0, 1], closed on the right (the first also includes 0), the
convention of scikit-learn's ``calibration_curve``. ECE is the count-weighted mean gap |accuracy - confidence|
over bins; MCE the largest gap over non-empty bins.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.tasks.classification.metrics import bin_ids, ece_from_pairs, label_view

log = logging.getLogger("medlens.calibration")


def _nll(logits: np.ndarray, targets: np.ndarray, task: str, t: float) -> float:
    z = logits / t
    if task == "multiclass":
        known = ~np.isnan(targets).any(axis=1)
        z, y = z[known], targets[known].argmax(axis=1)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean()) if len(y) else 0.0
    y = targets[:, 1:2] if task in ("binary", "anomaly") else targets
    mask = ~np.isnan(y)
    yv = np.nan_to_num(y)
    # log(1 + exp(-|z|)) form for stability
    loss = np.maximum(z, 0) - z * yv + np.log1p(np.exp(-np.abs(z)))
    return float((loss * mask).sum() / max(mask.sum(), 1))


#: the temperature search range: T in [1/20, 20], searched on log T
TEMPERATURE_RANGE = (1.0 / 20.0, 20.0)
#: a fitted log T this close to a bound (relative to the log range) counts as "hit the bound"
_BOUND_TOL = 1e-3


def _golden_log_t(f: Any) -> float:
    """Golden-section search of ``f(T)`` on log T over :data:`TEMPERATURE_RANGE`; returns T."""
    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(np.exp(a)), f(np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(np.exp(b))
    return float(np.exp((lo + hi) / 2))


def _fit_one(logits: np.ndarray, targets: np.ndarray, task: str) -> tuple[float, bool]:
    """(T, hit a bound of the search range) for one scalar temperature."""
    if len(logits) == 0:
        return 1.0, False
    t = _golden_log_t(lambda x: _nll(logits, targets, task, x))
    # keep T = 1 unless the fit really improves the likelihood
    if not _nll(logits, targets, task, t) < _nll(logits, targets, task, 1.0) - 1e-9:
        return 1.0, False
    span = np.log(TEMPERATURE_RANGE[1]) - np.log(TEMPERATURE_RANGE[0])
    at_bound = min(abs(np.log(t) - np.log(b)) for b in TEMPERATURE_RANGE) < _BOUND_TOL * span
    return t, bool(at_bound)


def fit_temperature(logits: np.ndarray, targets: np.ndarray, task: str) -> float:
    """The temperature minimising validation NLL (golden-section search on log T in [1/20, 20]).

    Example:
        >>> fit_temperature(np.array([[4.0], [-4.0], [4.0]]), np.array([[0, 1], [1, 0], [1, 0]]), "binary") > 1
        True
    """
    return _fit_one(np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.float64), task)[0]


def fit_temperatures(
    logits: np.ndarray, targets: np.ndarray, task: str, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Temperature scaling as deployed: one T per output for multi-label, one scalar otherwise.

    Multi-label outputs are independent sigmoids whose confidence can be off by different amounts, so each
    column gets its own golden-section search on its known validation entries (an all-unknown column keeps
    T = 1). A fit that ends on a bound of the search range (1/20 or 20) means the optimum lies beyond it:
    that output is (nearly) uninformative (T -> 20) or far too timid (T -> 1/20) on validation; one warning
    line per such output is logged and the output is listed in ``at_bound``.

    Args:
        logits: (N, K) validation logits.
        targets: (N, L) targets with NaN for unknown (binary/multiclass: one-hot).
        task: binary, multiclass or multilabel.
        label_names: names of the outputs (multi-label: the labels), for the record and warnings.

    Returns:
        ``{"temperature": float | list[float], "per_label": bool, "labels": [...], "range": [0.05, 20.0],
        "at_bound": [labels whose T hit a bound], "bound_hit": bool}`` -- ``temperature`` goes into the
        manifest, the rest into its metrics.

    Example:
        >>> r = fit_temperatures(np.array([[4.0, 1.0], [-4.0, -1.0]]), np.array([[0, 1], [1, 0]]), "multilabel", ["a", "b"])
        >>> r["per_label"], len(r["temperature"])
        (True, 2)
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    per_label = task == "multilabel"
    if per_label:
        names = [str(n) for n in (label_names if label_names is not None else range(z.shape[1]))]
        fits = [_fit_one(z[~np.isnan(y[:, j]), j : j + 1], y[~np.isnan(y[:, j]), j : j + 1], task) for j in range(z.shape[1])]
        temperature: float | list[float] = [t for t, _ in fits]
    else:
        names = ["all outputs"]
        fits = [_fit_one(z, y, task)]
        temperature = fits[0][0]
    at_bound = [n for n, (_, hit) in zip(names, fits, strict=True) if hit]
    for n, (t, hit) in zip(names, fits, strict=True):
        if hit:
            log.warning("temperature for %r hit the search bound (T = %.4g, range 1/20..20): the validation optimum lies beyond it", n, t)
    return {
        "temperature": temperature, "per_label": per_label, "labels": names,
        "range": [float(TEMPERATURE_RANGE[0]), float(TEMPERATURE_RANGE[1])],
        "at_bound": at_bound, "bound_hit": bool(at_bound),
    }


# ------------------------------------------------------------------------------------------ reliability
def _confidence_and_outcome(
    probs: np.ndarray, targets: np.ndarray, task: str, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (confidence, 0/1 outcome) pairs over the known entries (see the module docstring)."""

    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    k = p.shape[1] if p.ndim == 2 else 1
    names = [str(i) for i in range(t.shape[1] if t.ndim == 2 else 1)]
    s, y, known, _ = label_view(p, t, task, names if task != "binary" else ["neg", "pos"], mask)
    if task == "multiclass":
        rows = known[:, 0] if k else np.zeros(0, dtype=bool)
        s, y = s[rows], y[rows]
        return s.max(axis=1) if len(s) else np.zeros(0), (s.argmax(axis=1) == y.argmax(axis=1)).astype(np.float64)
    return s[known], y[known]


def reliability_bins(
    probs: np.ndarray, targets: np.ndarray, task: str, n_bins: int = 15, mask: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Per equal-width bin: edges, count, mean confidence and observed accuracy (``None`` for empty bins).

    Example:
        >>> b = reliability_bins(np.array([[.9], [.8], [.1]]), np.array([[0, 1], [1, 0], [1, 0]]), "binary", n_bins=2)
        >>> [(x["count"], x["accuracy"]) for x in b]
        [(1, 0.0), (2, 0.5)]
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, not {n_bins}")
    conf, hit = _confidence_and_outcome(probs, targets, task, mask)
    ids = bin_ids(conf, n_bins)
    counts = np.bincount(ids, minlength=n_bins)
    sum_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(ids, weights=hit, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return [
        {
            "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(counts[b]),
            "confidence": float(sum_conf[b] / counts[b]) if counts[b] else None,
            "accuracy": float(sum_hit[b] / counts[b]) if counts[b] else None,
        }
        for b in range(n_bins)
    ]


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, task: str, n_bins: int = 15, mask: np.ndarray | None = None
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width bins (NaN without known entries).

    Example:
        >>> expected_calibration_error(np.array([[.9], [.8], [.1]]), np.array([[0, 1], [1, 0], [1, 0]]), "binary", 2)
        0.2666666666666667
    """
    conf, hit = _confidence_and_outcome(probs, targets, task, mask)
    return ece_from_pairs(conf, hit, n_bins)


def brier_score(probs: np.ndarray, targets: np.ndarray, task: str, mask: np.ndarray | None = None) -> float:
    """Mean squared error of probabilities: per known entry (binary, multi-label) or summed over classes per sample
    (multiclass, as scikit-learn's ``brier_score_loss`` for 3+ classes). NaN without known entries.

    Example:
        >>> brier_score(np.array([[.9], [.2]]), np.array([[0, 1], [1, 0]]), "binary")
        0.025
    """

    t = np.asarray(targets, dtype=np.float64)
    names = ["neg", "pos"] if task in ("binary", "anomaly") else [str(i) for i in range(t.shape[1])]
    s, y, known, _ = label_view(probs, t, task, names, mask)
    if task == "multiclass":
        rows = known[:, 0]
        return float(np.mean(np.sum((s[rows] - y[rows]) ** 2, axis=1))) if rows.any() else float("nan")
    return float(np.mean((s[known] - y[known]) ** 2)) if known.any() else float("nan")


def calibration_summary(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    label_names: Sequence[str] | None = None,
    n_bins: int = 15,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """ECE, MCE, Brier score and reliability bins; per label too for multi-label tasks.

    Example:
        >>> s = calibration_summary(np.array([[.9], [.2]]), np.array([[0, 1], [1, 0]]), "binary", n_bins=5)
        >>> round(s["ece"], 3), len(s["bins"])
        (0.15, 5)
    """
    bins = reliability_bins(probs, targets, task, n_bins, mask)
    n = sum(b["count"] for b in bins)
    gaps = [abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]]
    out: dict[str, Any] = {
        "n_bins": n_bins,
        "n": n,
        "ece": float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / n) if n else None,
        "mce": float(max(gaps)) if gaps else None,
        "brier": _none_if_nan(brier_score(probs, targets, task, mask)),
        "bins": bins,
    }
    if task == "multilabel" and label_names is not None:
        p = np.asarray(probs, dtype=np.float64)
        t = np.asarray(targets, dtype=np.float64)
        m = None if mask is None else np.asarray(mask, dtype=bool)
        out["per_label"] = {
            name: _none_if_nan(expected_calibration_error(p[:, j : j + 1], t[:, j : j + 1], "multilabel", n_bins, None if m is None else m[:, j : j + 1]))
            for j, name in enumerate(label_names)
        }
    return out


def _none_if_nan(x: float) -> float | None:
    return None if x != x else float(x)
