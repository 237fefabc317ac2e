"""Regression metrics: MAE, RMSE, R^2, Pearson r, calibration in the large, with patient-bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: metrics where a smaller value is better (target checks, the report)
LOWER_IS_BETTER = frozenset({"mae", "rmse", "loss", "bias_abs"})
#: the metrics that get bootstrap intervals
CI_METRICS = ("mae", "rmse", "r2", "pearson_r", "bias")


def point_metrics(pred: np.ndarray, obs: np.ndarray) -> dict[str, float | None]:
    """Metrics of predicted vs observed values (rows with a NaN observation left out).

    ``bias`` is calibration in the large (mean predicted minus mean observed); ``slope`` and ``intercept`` are
    the calibration line (observed regressed on predicted: slope 1 and intercept 0 when calibrated).

    Example:
        >>> m = point_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
        >>> round(m["mae"], 3), round(m["r2"], 3)
        (0.333, 0.786)
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(obs, dtype=np.float64).ravel()
    keep = ~np.isnan(y) & ~np.isnan(p)
    p, y = p[keep], y[keep]
    n = int(len(y))
    out: dict[str, float | None] = {"n": n}
    if n == 0:
        return {**out, "mae": None, "rmse": None, "r2": None, "pearson_r": None, "bias": None, "slope": None, "intercept": None}
    err = p - y
    out["mae"] = float(np.mean(np.abs(err)))
    out["rmse"] = float(math.sqrt(np.mean(err**2)))
    out["bias"] = float(np.mean(err))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    out["r2"] = None if ss_tot == 0 else float(1.0 - np.sum(err**2) / ss_tot)
    sp, sy = float(np.std(p)), float(np.std(y))
    out["pearson_r"] = None if sp == 0 or sy == 0 else float(np.mean((p - p.mean()) * (y - y.mean())) / (sp * sy))
    if sp > 0:
        slope = float(np.mean((p - p.mean()) * (y - y.mean())) / sp**2)
        out["slope"], out["intercept"] = slope, float(y.mean() - slope * p.mean())
    else:
        out["slope"] = out["intercept"] = None
    out["mean_observed"] = float(y.mean())
    out["mean_predicted"] = float(p.mean())
    return out


def resample_rows(groups: Sequence[Any] | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap replicate: whole groups (patients) drawn with replacement, or rows when no
    groups are given."""
    if groups is None:
        return rng.integers(0, n, n)
    keys = np.asarray(["" if g is None else str(g) for g in groups])
    uniq, inv = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    picked = rng.integers(0, len(uniq), len(uniq))
    return np.concatenate([members[g] for g in picked]) if len(picked) else np.zeros(0, dtype=np.int64)


def bootstrap_intervals(pred: np.ndarray, obs: np.ndarray, groups: Sequence[Any] | None = None, n_boot: int = 500,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Percentile intervals of :data:`CI_METRICS`, resampling patients when ``groups`` are given."""
    rng = np.random.default_rng(seed)
    p = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(obs, dtype=np.float64).ravel()
    draws: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    for _ in range(n_boot):
        idx = resample_rows(groups, len(y), rng)
        m = point_metrics(p[idx], y[idx])
        for k in CI_METRICS:
            if m.get(k) is not None:
                draws[k].append(float(m[k]))  # type: ignore[arg-type]
    a = (1 - confidence) / 2
    out: dict[str, dict[str, float | None]] = {}
    for k, vals in draws.items():
        ok = len(vals) >= 20
        out[k] = {"low": float(np.quantile(vals, a)) if ok else None, "high": float(np.quantile(vals, 1 - a)) if ok else None,
                  "n_boot": len(vals)}
    return out


def regression_metrics(pred: np.ndarray, obs: np.ndarray, groups: Sequence[Any] | None = None, n_boot: int = 500,
                       seed: int = 0) -> dict[str, Any]:
    """Point metrics plus their bootstrap 95 % intervals under ``ci`` (by patient when ``groups`` are given)."""
    m: dict[str, Any] = point_metrics(pred, obs)
    if m["n"] and n_boot:
        keep = ~np.isnan(np.asarray(obs, dtype=np.float64).ravel())
        g = None if groups is None else [x for x, k in zip(groups, keep, strict=True) if k]
        m["ci"] = bootstrap_intervals(np.asarray(pred).ravel()[keep], np.asarray(obs).ravel()[keep], g, n_boot=n_boot, seed=seed)
        m["ci_by"] = "group" if groups is not None else "sample"
    return m


def interval_halfwidth(residuals: np.ndarray, level: float) -> float:
    """Split-conformal half-width: the ceil((n + 1) level) / n quantile of |residual| (covers ``level`` of new cases
    from the same population)."""
    r = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    r = r[~np.isnan(r)]
    if len(r) == 0:
        return float("nan")
    q = min(1.0, math.ceil((len(r) + 1) * level) / len(r))
    return float(np.quantile(r, q, method="higher"))
