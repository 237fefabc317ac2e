"""Calibration: temperature scaling fitted on validation logits, and expected calibration error.

Temperature scaling (Guo et al., 2017) divides logits by one scalar T > 0 chosen to minimise the validation
negative log-likelihood. It changes confidence, not ranking: AUROC is unchanged, and for binary/multi-label
models a threshold on probabilities moves with it (thresholds are tuned after calibration).
"""

from __future__ import annotations

import numpy as np


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


def fit_temperature(logits: np.ndarray, targets: np.ndarray, task: str) -> float:
    """The temperature minimising validation NLL (golden-section search on log T in [1/20, 20]).

    Example:
        >>> fit_temperature(np.array([[4.0], [-4.0], [4.0]]), np.array([[0, 1], [1, 0], [1, 0]]), "binary") > 1
        True
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if len(logits) == 0:
        return 1.0
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits, targets, task, np.exp(a)), _nll(logits, targets, task, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits, targets, task, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits, targets, task, np.exp(b))
    t = float(np.exp((lo + hi) / 2))
    # keep T = 1 unless the fit really improves the likelihood
    return t if _nll(logits, targets, task, t) < _nll(logits, targets, task, 1.0) - 1e-9 else 1.0


def fit_temperature_from_predictor(predictor, table) -> float:
    """Fit T on a validation table, using an uncalibrated predictor's logits."""
    logits = predictor.predict_table(table, logits=True)
    return fit_temperature(logits, table.targets, predictor.manifest.task)
