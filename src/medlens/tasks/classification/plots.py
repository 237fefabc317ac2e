"""Classification plots as PNG bytes: ROC and precision-recall curves per label (with bootstrap bands and the
deployed operating point), confusion matrices and the reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.figures import CELL, figure, grid, to_png, undefined
from medlens.figures import panels as panel_grid
from medlens.tasks.classification.metrics import label_view, pr_points, roc_points


def _band(ax, bands: dict[str, Any] | None, name: str, curve: str, key: str, color: str = "C0") -> None:
    entry = None if bands is None else ((bands.get("labels") or {}).get(name) or {}).get(curve)
    if not entry or entry.get("low") is None:
        return
    level = int(round(100 * bands.get("confidence", 0.95)))
    ax.fill_between(bands["grid"], entry["low"], entry["high"], step="post", color=color, alpha=0.2, lw=0,
                    label=f"{level}% bootstrap band")


def _marker(ax, bands: dict[str, Any] | None, name: str, x: str, y: str) -> None:
    op = None if bands is None else ((bands.get("labels") or {}).get(name) or {}).get("operating_point")
    if not op or op.get(x) is None or op.get(y) is None:
        return
    thr = op.get("threshold")
    ax.plot([op[x]], [op[y]], marker="o", ms=6, color="C3", ls="none", zorder=5,
            label="deployed" + (f" (t={thr:.2f})" if thr is not None else " (arg-max)"))
    ax.legend(fontsize=6, loc="lower right" if x == "fpr" else "lower left", frameon=False)


def roc_png(
    probs: np.ndarray, targets: np.ndarray, task: str, label_names: Sequence[str], mask: np.ndarray | None = None, max_cols: int = 4,
    bands: dict[str, Any] | None = None,
) -> bytes:
    """ROC curve per label (binary: the positive class; multiclass: one-vs-rest), AUROC in each title.

    With ``bands`` (:func:`medlens.tasks.classification.uncertainty.curve_bands`) each panel also shades the
    bootstrap band of TPR at fixed FPR and marks the deployed operating point (a red dot).

    Example:
        >>> png = roc_png(probs, targets, "multilabel", names)  # doctest: +SKIP
    """
    s, y, known, names = label_view(probs, targets, task, label_names, mask)
    rows, cols = grid(len(names), max_cols)
    fig = figure(CELL * cols, CELL * rows + 0.5, constrained=False)
    fig.supxlabel("1 - specificity (false positive rate)", fontsize=9)
    fig.supylabel("sensitivity", fontsize=9)
    for j, ax in enumerate(panel_grid(fig, len(names), max_cols, unit_square=True)):
        k = known[:, j]
        fpr, tpr, _ = roc_points(s[k, j], y[k, j])
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        if len(fpr):
            auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
            _band(ax, bands, names[j], "roc", "tpr")
            ax.plot(fpr, tpr, lw=1.6, color="C0", drawstyle="default")
            _marker(ax, bands, names[j], "fpr", "tpr")
            ax.set_title(f"{names[j]}\nAUROC {auc:.3f}  (n+={int(y[k, j].sum())})", fontsize=9)
        else:
            ax.set_title(names[j], fontsize=9)
            undefined(ax, "undefined:\nonly one class present")
    return to_png(fig)


def pr_png(
    probs: np.ndarray, targets: np.ndarray, task: str, label_names: Sequence[str], mask: np.ndarray | None = None, max_cols: int = 4,
    bands: dict[str, Any] | None = None,
) -> bytes:
    """Precision-recall curve per label, average precision and the prevalence baseline in each panel.

    With ``bands`` the bootstrap band of interpolated precision at fixed recall is shaded and the deployed
    operating point marked.

    Example:
        >>> png = pr_png(probs, targets, "binary", ["normal", "pneumonia"])  # doctest: +SKIP
    """
    s, y, known, names = label_view(probs, targets, task, label_names, mask)
    rows, cols = grid(len(names), max_cols)
    fig = figure(CELL * cols, CELL * rows + 0.5, constrained=False)
    fig.supxlabel("recall (sensitivity)", fontsize=9)
    fig.supylabel("precision", fontsize=9)
    for j, ax in enumerate(panel_grid(fig, len(names), max_cols, unit_square=True)):
        k = known[:, j]
        rec, prec, _ = pr_points(s[k, j], y[k, j])
        if len(rec):
            prev = float(y[k, j].mean())
            ap = float(np.sum(np.diff(rec) * prec[1:]))
            ax.axhline(prev, ls="--", lw=0.8, color="0.6")
            _band(ax, bands, names[j], "pr", "precision", color="C1")
            ax.step(rec, prec, where="post", lw=1.6, color="C1")
            _marker(ax, bands, names[j], "recall", "precision")
            ax.set_title(f"{names[j]}\nAP {ap:.3f}  (prevalence {prev:.2f})", fontsize=9)
        else:
            ax.set_title(names[j], fontsize=9)
            undefined(ax, "undefined:\nno positives")
    return to_png(fig)


def _matrix(ax, m: np.ndarray, labels: Sequence[str], title: str) -> None:
    m = np.asarray(m, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.6 else "black")
    tilt = len(labels) > 2 or max((len(str(lb)) for lb in labels), default=0) > 7
    ax.set_xticks(range(len(labels)), labels=labels, fontsize=7, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)


def confusion_panels(metrics: dict[str, Any], label_names: Sequence[str]) -> list[dict[str, Any]]:
    """The confusion matrices of a metrics dict as data: ``{"title", "labels", "matrix"}`` per panel (rows: true).

    Multiclass: one K x K matrix over the class names. Binary: one 2 x 2 matrix over the two class names (the
    negative class first). Multi-label: one 2 x 2 per label, its classes "no <label>" and "<label>".

    Example:
        >>> m = {"task": "binary", "per_label": {"pneumonia": {"tn": 5, "fp": 1, "fn": 2, "tp": 4, "threshold": 0.5}}}
        >>> confusion_panels(m, ["normal", "pneumonia"])[0]["labels"]
        ['normal', 'pneumonia']
    """
    if metrics.get("task") == "multiclass":
        return [{"title": "confusion matrix (row: true class)", "labels": list(label_names), "matrix": metrics["confusion_matrix"]}]
    per = metrics["per_label"]
    names = list(per)
    # one scored label and one more class name: the other name is its negative class (binary)
    negative = label_names[0] if len(names) == 1 and len(label_names) == 2 and names[0] == label_names[1] else None
    panels = []
    for name in names:
        d = per[name]
        thr = d.get("threshold")
        panels.append({
            "title": f"{name}" + (f" (t={thr:.2f})" if thr is not None else ""),
            "labels": [negative if negative is not None else f"no {name}", name],
            "matrix": [[d["tn"], d["fp"]], [d["fn"], d["tp"]]],
        })
    return panels


def confusion_png(metrics: dict[str, Any], label_names: Sequence[str], max_cols: int = 5) -> bytes:
    """Confusion matrices from a metrics dict (:func:`confusion_panels`): rows true class, columns predicted;
    each cell shows count and row share; axes carry the class names.

    Example:
        >>> png = confusion_png(classification_metrics(probs, targets, "multilabel", names), names)  # doctest: +SKIP
    """
    panels = confusion_panels(metrics, label_names)
    if metrics.get("task") == "multiclass":
        k = len(label_names)
        fig = figure(max(4.0, 0.7 * k + 2), max(3.5, 0.7 * k + 1.5))
        p = panels[0]
        _matrix(fig.subplots(), np.asarray(p["matrix"]), p["labels"], p["title"])
        return to_png(fig)
    rows, cols = grid(len(panels), max_cols)
    fig = figure(2.3 * cols, 2.3 * rows + 0.2, constrained=False)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.9 / w, right=1 - 0.1 / w, bottom=0.7 / h, top=1 - 0.35 / h, wspace=0.75, hspace=0.9)
    for ax, p in zip(panel_grid(fig, len(panels), max_cols), panels, strict=True):
        _matrix(ax, np.array(p["matrix"]), [_short(lb) for lb in p["labels"]], p["title"])
    return to_png(fig)


def _short(text: str, n: int = 14) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def reliability_png(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    n_bins: int = 15,
    uncalibrated_probs: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> bytes:
    """Reliability diagram (observed frequency against mean confidence per bin) with ECE, over a histogram of
    confidences; optionally the uncalibrated (temperature 1) probabilities for comparison.

    Example:
        >>> png = reliability_png(probs, targets, "binary", uncalibrated_probs=raw)  # doctest: +SKIP
    """
    from medlens.tasks.classification.calibration import expected_calibration_error, reliability_bins

    fig = figure(4.6, 5.0)
    ax, hx = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="perfect calibration")
    series = [("calibrated" if uncalibrated_probs is not None else "model", probs, "C0")]
    if uncalibrated_probs is not None:
        series.append(("uncalibrated (T = 1)", uncalibrated_probs, "C3"))
    width = 1.0 / n_bins
    for name, p, color in series:
        bins = reliability_bins(p, targets, task, n_bins, mask)
        full = [b for b in bins if b["count"]]
        ece = expected_calibration_error(p, targets, task, n_bins, mask)
        ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], marker="o", ms=4, lw=1.4, color=color,
                label=f"{name}: ECE {ece:.3f}")
        hx.bar([b["lo"] + width / 2 for b in bins], [b["count"] for b in bins], width=width * 0.9, color=color,
               alpha=0.45 if len(series) > 1 else 0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    top = task == "multiclass"
    ax.set_ylabel("accuracy" if top else "observed frequency", fontsize=9)
    ax.set_title("reliability diagram" + (" (top label)" if top else ""), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    hx.set_xlabel("confidence" if top else "predicted probability", fontsize=9)
    hx.set_ylabel("count", fontsize=8)
    hx.tick_params(labelsize=7)
    return to_png(fig)
