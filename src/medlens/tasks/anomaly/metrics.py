"""Metrics of anomaly scores at the bundle's threshold (the abnormal class is the positive one)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.tasks.classification.metrics import classification_metrics
from medlens.tasks.classification.uncertainty import bootstrap_ci

#: headline metrics that get a bootstrap CI
CI_METRICS = ("auroc_macro", "average_precision_macro", "f1_macro", "sensitivity_macro", "specificity_macro")
DEFAULT_N_BOOT = 1000


def anomaly_metrics(
    probs: np.ndarray, targets: np.ndarray, manifest: Any, groups: Any = None, n_boot: int | None = DEFAULT_N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """Metrics of anomaly scores at the bundle's threshold, with bootstrap CIs.

    Args:
        probs: (N, 1) anomaly scores (what :class:`medlens.inference.Predictor` returns for anomaly bundles).
        targets: (N, 2) anomaly targets (normal, abnormal), NaN unknown.
        manifest: the bundle's manifest (label names, threshold, score settings).
        groups: patient ids for a cluster bootstrap, or None.
        n_boot: bootstrap replicates (0 or None: no CIs).
        seed: bootstrap seed.

    Returns:
        :func:`medlens.tasks.classification.metrics.classification_metrics` output for task ``anomaly`` (``auroc_macro``,
        ``average_precision_macro``, ``f1_macro``, ... with ``abnormal`` the positive label) plus the short names
        ``auroc``, ``average_precision``, ``f1``, ``sensitivity``, ``specificity``, ``fpr`` (at the threshold),
        ``threshold``, ``fpr_target``, ``score_method`` and ``ci`` (:func:`medlens.uncertainty.bootstrap_ci`).

    Example:
        >>> m = anomaly_metrics(scores, targets, bundle.manifest)  # doctest: +SKIP
        >>> m["auroc"], m["ci"]["headline"]["auroc_macro"]["low"]  # doctest: +SKIP
    """
    a = manifest.task_section or {}
    thr = list(manifest.thresholds) or ([a["threshold"]] if a.get("threshold") is not None else None)
    names = manifest.label_names
    m = classification_metrics(probs, targets, "binary", names, thr, calibration=False)
    spec = m.get("specificity_macro")
    m.update({
        "task": "anomaly", "auroc": m.get("auroc_macro"), "average_precision": m.get("average_precision_macro"), "f1": m.get("f1_macro"),
        "sensitivity": m.get("sensitivity_macro"), "specificity": spec, "fpr": None if spec is None else 1.0 - spec,
        "threshold": None if not thr else float(thr[0]), "fpr_target": a.get("fpr"),
        "score_method": f"{a.get('error_map', 'mse')}/{a.get('method', 'mean')}",
    })
    if n_boot:
        if len(probs):
            m["ci"] = bootstrap_ci(probs, targets, "binary", names, thr, groups=groups, n_boot=n_boot, seed=seed, metrics=CI_METRICS, label_metrics=())
    return m
