"""The regression task's part of the evaluation report: MAE, RMSE, R^2 and Pearson r with patient-bootstrap
intervals, calibration in the large (mean predicted minus mean observed, and the calibration line), the coverage
of the prediction interval, a Bland-Altman plot and predicted against observed values."""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.figures import figure, to_png
from medlens.htmlkit import esc, fmt, html_img, html_table
from medlens.tasks.base import ReportInputs, ReportPart
from medlens.tasks.regression.metrics import CI_METRICS, bootstrap_intervals, point_metrics

NAMES = {"mae": "Mean absolute error", "rmse": "Root mean squared error", "r2": "R squared", "pearson_r": "Pearson r",
         "bias": "Mean predicted - mean observed (calibration in the large)"}


def bland_altman_png(pred: np.ndarray, obs: np.ndarray, name: str) -> bytes:
    """Bland-Altman plot: the difference (predicted - observed) against the mean of the two, with the mean
    difference (bias) and the 95 % limits of agreement (bias +- 1.96 sd)."""
    diff, mean = pred - obs, (pred + obs) / 2
    bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0
    fig = figure(5.2, 3.8)
    ax = fig.subplots()
    ax.scatter(mean, diff, s=10, alpha=0.6, color="C0")
    ax.axhline(bias, color="C3", lw=1.4, label=f"bias {bias:+.3g}")
    for k in (-1.96, 1.96):
        ax.axhline(bias + k * sd, color="C3", lw=1, ls="--")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(f"mean of predicted and observed {name}", fontsize=9)
    ax.set_ylabel("predicted - observed", fontsize=9)
    ax.set_title(f"Bland-Altman: limits of agreement {bias - 1.96 * sd:+.3g} to {bias + 1.96 * sd:+.3g}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    return to_png(fig)


def scatter_png(pred: np.ndarray, obs: np.ndarray, name: str) -> bytes:
    """Predicted against observed values with the identity line."""
    fig = figure(4.2, 4.0)
    ax = fig.subplots()
    lo, hi = float(min(pred.min(), obs.min())), float(max(pred.max(), obs.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", ls="--", lw=0.8, label="perfect agreement")
    ax.scatter(obs, pred, s=10, alpha=0.6, color="C0")
    ax.set_xlabel(f"observed {name}", fontsize=9)
    ax.set_ylabel(f"predicted {name}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return to_png(fig)


def report_part(ri: ReportInputs) -> ReportPart:
    """Score the split's values into the report's numbers, figures and HTML sections."""
    name = ri.manifest.label_names[0]
    pred, obs = ri.scores[:, 0].astype(np.float64), ri.table.targets[:, 0].astype(np.float64)
    known = ~np.isnan(obs)
    pred, obs = pred[known], obs[known]
    groups = None if ri.table.groups is None else [g for g, k in zip(ri.table.groups, known, strict=True) if k]
    pt: dict[str, Any] = point_metrics(pred, obs)
    ci = bootstrap_intervals(pred, obs, groups, n_boot=ri.n_boot, confidence=ri.confidence, seed=ri.seed)
    section = ri.manifest.task_section or {}
    half = section.get("interval_halfwidth")
    if half is not None and len(obs):
        pt["interval_coverage"] = float(np.mean(np.abs(pred - obs) <= half))
    level = int(round(100 * ri.confidence))
    unit = "patients" if groups is not None else "images"
    entries = {k: {"value": pt.get(k), **ci.get(k, {})} for k in CI_METRICS}
    ci_doc = {"confidence": ri.confidence, "n_boot": ri.n_boot, "unit": "group" if groups is not None else "sample", "headline": entries}
    rows = [[esc(NAMES[k]) + f' <span class="muted">{esc(k)}</span>', fmt(e["value"]),
             "n/a" if e.get("low") is None else f"{fmt(e['low'])}&ndash;{fmt(e['high'])}"] for k, e in entries.items()]
    headline = (f"<h2>Headline metrics ({esc(ri.split)} split)</h2><p>{level}% intervals: percentile bootstrap, {ri.n_boot} replicates "
                f"resampling {unit}. Values in the units of <b>{esc(name)}</b>; n = {pt['n']}.</p>"
                + html_table(["metric", "value", f"{level}% CI"], rows))
    cal = (f"<h2>Calibration</h2><p>Calibration in the large: mean predicted {fmt(pt.get('mean_predicted'), 2)}, mean observed "
           f"{fmt(pt.get('mean_observed'), 2)} (difference {fmt(pt.get('bias'), 2)}). Calibration line (observed regressed on predicted): "
           f"slope {fmt(pt.get('slope'))}, intercept {fmt(pt.get('intercept'), 2)}; a calibrated model has slope 1 and intercept 0.</p>")
    if half is not None:
        cal += (f"<p>Prediction interval: &plusmn;{fmt(half, 2)} around each value, sized on validation to cover "
                f"{fmt(100 * float(section.get('interval_level', 0)), 0)}% of cases; here it covers "
                f"<b>{fmt(100 * pt.get('interval_coverage', float('nan')), 1)}%</b> of the {esc(ri.split)} split.</p>")
    figs = ""
    if len(obs) >= 2:
        figs = ("<h2>Agreement</h2>"
                + html_img(bland_altman_png(pred, obs, name), "Bland-Altman plot",
                           "Each dot an image: the difference against the mean of predicted and observed; the solid line is the bias, "
                           "the dashed lines the 95% limits of agreement.")
                + html_img(scatter_png(pred, obs, name), "predicted against observed", "The dashed line is perfect agreement."))
    cards = [("MAE", entries["mae"]), ("RMSE", entries["rmse"]), ("R squared", entries["r2"]), ("Pearson r", entries["pearson_r"])]
    warnings = [] if pt["n"] >= 30 else [f"only {pt['n']} images with a value: the intervals are wide and the figures unstable"]
    return ReportPart(metrics=pt, ci=ci_doc, cards=cards, sections=[headline, cal, figs], json={"interval": section},
                      warnings=warnings, interval_note=f"percentile bootstrap, {ri.n_boot} replicates, seed {ri.seed}, unit {ci_doc['unit']}")
