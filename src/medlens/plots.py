"""Run-level plots as PNG bytes: training curves and cross-validation folds (a task's own plots live with the task,
e.g. ``medlens.tasks.classification.plots`` for ROC, PR, confusion and reliability).

Figures are drawn with matplotlib's object API on an Agg canvas (:mod:`medlens.figures`), so plotting works
headless and never touches a user's interactive backend. :func:`save_png` writes PNG bytes atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medlens.figures import figure, save_png, to_png

__all__ = ["folds_png", "save_png", "training_curves_png"]


def training_curves_png(history: Sequence[dict[str, Any]], label: Callable[[str], str] | None = None) -> bytes | None:
    """Loss (train and validation) and validation metrics per epoch from a run's history; None when empty.

    ``label``: each curve's legend name from its key (the task's :meth:`~medlens.tasks.Task.history_column`, which
    says ``@0.5`` where a rate was computed at 0.5 rather than at the deployed threshold).

    Example:
        >>> png = training_curves_png(bundle.manifest.history)  # doctest: +SKIP
    """
    rows = [r for r in history if isinstance(r, dict) and "epoch" in r]
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and isinstance(v, (int, float)) and k not in ("epoch", "step"):
                keys.append(k)
    losses = [k for k in keys if k.endswith("loss")]
    wanted = ("auroc_macro", "average_precision_macro", "f1_macro", "accuracy", "sensitivity_macro", "specificity_macro", "ece")
    scores = [k for k in keys if k.startswith("val/") and k[4:] in wanted]
    fig = figure(9.0, 3.4)
    lax, max_ = fig.subplots(1, 2)
    marker = "o" if len(rows) < 30 else None
    for k in losses:
        lax.plot(epochs, [r.get(k, np.nan) for r in rows], marker=marker, ms=4, label=k)
    lax.set_title("loss", fontsize=10)
    for k in scores:
        max_.plot(epochs, [r.get(k, np.nan) for r in rows], marker=marker, ms=4, label=label(k) if label else k)
    max_.set_title("validation metrics", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for a in (lax, max_):
        a.set_xlabel("epoch", fontsize=9)
        a.tick_params(labelsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, loc="best")
        if len(epochs) == 1:
            a.set_xticks(epochs)
    return to_png(fig)


def folds_png(fold_metrics: Sequence[dict[str, Any]], metrics: Sequence[str]) -> bytes:
    """Cross-validation: each fold's value of each metric (dots) with the mean +- std (bar and whiskers).

    Example:
        >>> png = folds_png([m0, m1, m2], ["auroc_macro", "f1_macro"])  # doctest: +SKIP
    """
    fig = figure(max(4.0, 1.3 * len(metrics) + 1.5), 3.6)
    ax = fig.subplots()
    for i, name in enumerate(metrics):
        vals = np.array([m.get(name) for m in fold_metrics if isinstance(m.get(name), (int, float))], dtype=np.float64)
        if len(vals) == 0:
            continue
        mean, sd = float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        ax.bar(i, mean, width=0.6, color="C0", alpha=0.3)
        ax.errorbar(i, mean, yerr=sd, color="C0", capsize=6, lw=1.5)
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, color="C3", s=16, zorder=3)
    ax.set_xticks(range(len(metrics)), labels=list(metrics), rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{len(fold_metrics)} folds: each fold (dots), mean +- std (bars)", fontsize=10)
    return to_png(fig)
