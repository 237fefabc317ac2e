"""Evaluation plots as PNG bytes: ROC and precision-recall curves per label, confusion matrices, reliability
diagram, training curves, and cross-validation folds.

Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global backend switch), so
plotting works headless and never touches a user's interactive backend. Every function returns PNG bytes;
:func:`save_png` writes them atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import write_bytes_atomic
from medlens.tasks import get_task
from medlens.tasks.classification.metrics import label_view, pr_points, roc_points

_DPI = 100
_CELL = 2.6  # inches per small-multiple panel


def _figure(width: float, height: float, constrained: bool = True):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # constrained layout is slow with many panels; small multiples use fixed margins instead
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes to ``path`` atomically (temp file + rename).

    Example:
        >>> save_png(roc_png(probs, targets, "multilabel", names), "roc.png")  # doctest: +SKIP
    """
    return write_bytes_atomic(path, data)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return int(math.ceil(n / cols)), cols


def _panels(fig, n: int, max_cols: int, unit_square: bool = False):
    """A grid of n panels; with ``unit_square`` they share fixed [0, 1] axes and only outer panels get tick labels."""
    rows, cols = _grid(n, max_cols)
    if unit_square:
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=0.55 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.45 / h, wspace=0.12, hspace=0.42)
    else:
        axes = fig.subplots(rows, cols, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    if unit_square:
        for ax in flat:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=7)
        for i, ax in enumerate(flat[:n]):
            r, c = divmod(i, cols)
            if r + 1 < rows and i + cols < n:
                ax.tick_params(labelbottom=False)
            else:
                ax.tick_params(labelbottom=True)
            if c > 0:
                ax.tick_params(labelleft=False)
    return flat[:n]


def _undefined(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", wrap=True, transform=ax.transAxes)


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
    rows, cols = _grid(len(names), max_cols)
    fig = _figure(_CELL * cols, _CELL * rows + 0.5, constrained=False)
    fig.supxlabel("1 - specificity (false positive rate)", fontsize=9)
    fig.supylabel("sensitivity", fontsize=9)
    for j, ax in enumerate(_panels(fig, len(names), max_cols, unit_square=True)):
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
            _undefined(ax, "undefined:\nonly one class present")
    return _png(fig)


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
    rows, cols = _grid(len(names), max_cols)
    fig = _figure(_CELL * cols, _CELL * rows + 0.5, constrained=False)
    fig.supxlabel("recall (sensitivity)", fontsize=9)
    fig.supylabel("precision", fontsize=9)
    for j, ax in enumerate(_panels(fig, len(names), max_cols, unit_square=True)):
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
            _undefined(ax, "undefined:\nno positives")
    return _png(fig)


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
    if get_task(metrics.get("task")).top_label:
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
    if get_task(metrics.get("task")).top_label:
        k = len(label_names)
        fig = _figure(max(4.0, 0.7 * k + 2), max(3.5, 0.7 * k + 1.5))
        p = panels[0]
        _matrix(fig.subplots(), np.asarray(p["matrix"]), p["labels"], p["title"])
        return _png(fig)
    rows, cols = _grid(len(panels), max_cols)
    fig = _figure(2.3 * cols, 2.3 * rows + 0.2, constrained=False)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.9 / w, right=1 - 0.1 / w, bottom=0.7 / h, top=1 - 0.35 / h, wspace=0.75, hspace=0.9)
    for ax, p in zip(_panels(fig, len(panels), max_cols), panels, strict=True):
        _matrix(ax, np.array(p["matrix"]), [_short(lb) for lb in p["labels"]], p["title"])
    return _png(fig)


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

    fig = _figure(4.6, 5.0)
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
    top = get_task(task).top_label
    ax.set_ylabel("accuracy" if top else "observed frequency", fontsize=9)
    ax.set_title("reliability diagram" + (" (top label)" if top else ""), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    hx.set_xlabel("confidence" if top else "predicted probability", fontsize=9)
    hx.set_ylabel("count", fontsize=8)
    hx.tick_params(labelsize=7)
    return _png(fig)


def training_curves_png(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Loss (train and validation) and validation metrics per epoch from a run's history; None when empty.

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
    fig = _figure(9.0, 3.4)
    lax, max_ = fig.subplots(1, 2)
    marker = "o" if len(rows) < 30 else None
    for k in losses:
        lax.plot(epochs, [r.get(k, np.nan) for r in rows], marker=marker, ms=4, label=k)
    lax.set_title("loss", fontsize=10)
    for k in scores:
        max_.plot(epochs, [r.get(k, np.nan) for r in rows], marker=marker, ms=4, label=k)
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
    return _png(fig)


def folds_png(fold_metrics: Sequence[dict[str, Any]], metrics: Sequence[str]) -> bytes:
    """Cross-validation: each fold's value of each metric (dots) with the mean +- std (bar and whiskers).

    Example:
        >>> png = folds_png([m0, m1, m2], ["auroc_macro", "f1_macro"])  # doctest: +SKIP
    """
    fig = _figure(max(4.0, 1.3 * len(metrics) + 1.5), 3.6)
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
    return _png(fig)
