"""Classification's part of the evaluation report (``medlens report``): headline metrics with bootstrap intervals,
per label with Wilson intervals, the operating points (deployed thresholds and a validation sweep), calibration
(temperature, ECE, reliability diagram) and the ROC, precision-recall and confusion figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medlens.htmlkit import ci_text, esc, fmt, html_img, html_table
from medlens.tasks.base import ReportInputs, ReportPart

HEADLINE_LABELS = {
    "auroc_macro": "AUROC (macro)", "average_precision_macro": "Average precision (macro)",
    "sensitivity_macro": "Sensitivity (macro)", "specificity_macro": "Specificity (macro)",
    "precision_macro": "Precision / PPV (macro)", "f1_macro": "F1 (macro)", "accuracy": "Accuracy",
    "auroc_micro": "AUROC (micro)", "f1_micro": "F1 (micro)", "auroc_weighted": "AUROC (weighted)",
    "exact_match": "Exact match (all labels right)", "hamming_accuracy": "Hamming accuracy",
    "ece": "Expected calibration error", "brier": "Brier score",
}


def is_one(temperature: float | list[float]) -> bool:
    return all(float(t) == 1.0 for t in (temperature if isinstance(temperature, list) else [temperature]))


def temperature_record(temperature: float | list[float], fit: dict[str, Any] | None, label_names: Sequence[str]) -> dict[str, Any]:
    """The deployed temperature(s) with the fit's record (search range, outputs that hit a bound), for the report.

    ``fit`` is what training stored in the manifest's metrics (``calibration``); bundles from before per-label
    temperatures have none, then the range is the default one and no bound information is known.

    Example:
        >>> temperature_record([1.2, 20.0], {"range": [0.05, 20.0], "at_bound": ["b"]}, ["a", "b"])["rows"][1]
        {'output': 'b', 'temperature': 20.0, 'at_bound': True}
    """
    from medlens.tasks.classification.calibration import TEMPERATURE_RANGE

    fit = fit or {}
    at_bound = [str(x) for x in fit.get("at_bound") or []]
    if isinstance(temperature, list):
        outputs = [str(n) for n in (fit.get("labels") or label_names)]
        if len(outputs) != len(temperature):
            outputs = [str(n) for n in label_names][: len(temperature)]
        rows = [{"output": n, "temperature": float(t), "at_bound": n in at_bound} for n, t in zip(outputs, temperature, strict=False)]
    else:
        rows = [{"output": "all outputs", "temperature": float(temperature), "at_bound": bool(at_bound)}]
    return {
        "per_label": isinstance(temperature, list), "rows": rows,
        "range": list(fit.get("range") or [float(TEMPERATURE_RANGE[0]), float(TEMPERATURE_RANGE[1])]),
        "at_bound": at_bound, "recorded": bool(fit),
    }


def temperature_html(cs: dict[str, Any]) -> str:
    """The deployed temperature(s), the search range and any bound hit."""
    rec = cs.get("fit") or temperature_record(cs["temperature"], None, [])
    lo, hi = rec["range"]
    applied = "applied" if cs["applied"] else "not applied in this report"
    rng = f"searched on log T over {fmt(lo, 3)}&ndash;{fmt(hi, 1)}"
    out = []
    if rec["per_label"]:
        out.append(f"<p>Temperatures fitted on validation, <b>one per label</b> ({rng}; {applied}):</p>")
        out.append(html_table(["label", "T", "at a search bound"], [
            [esc(r["output"]), fmt(r["temperature"]), '<span class="notmet">yes</span>' if r["at_bound"] else ("no" if rec["recorded"] else "n/a")]
            for r in rec["rows"]]))
    else:
        out.append(f"<p>Temperature fitted on validation: <b>T = {fmt(rec['rows'][0]['temperature'])}</b> ({rng}; {applied}).</p>")
    for name in rec["at_bound"]:
        out.append(f'<div class="warn">The temperature of {esc(name)} hit a bound of the search range ({fmt(lo, 3)}&ndash;{fmt(hi, 1)}): '
                   "the validation optimum lies beyond it, so this output is nearly uninformative (T at 20) or far too timid "
                   "(T at 1/20) on validation.</div>")
    return "".join(out)


def wilson_html(pt: dict[str, Any], ci: dict[str, Any], level: int) -> str:
    """Wilson score intervals from the confusion counts beside the bootstrap CIs, per label and pooled."""
    if not any("wilson" in d for d in pt["per_label"].values()):
        return ""

    def w(e: dict[str, Any] | None) -> str:
        if not e or e.get("low") is None:
            return f"n/a <span class=muted>({(e or {}).get('k', 0)}/{(e or {}).get('n', 0)})</span>"
        return (f"{fmt(e['estimate'])} <span class=ci>({fmt(e['low'])}&ndash;{fmt(e['high'])})</span> "
                f"<span class=muted>{e['k']}/{e['n']}</span>")

    rows = []
    for lb, d in pt["per_label"].items():
        wl, c = d.get("wilson") or {}, ci["per_label"].get(lb, {})
        rows.append([esc(lb), w(wl.get("sensitivity")), ci_text(c.get("sensitivity")), w(wl.get("specificity")), ci_text(c.get("specificity")),
                     w(wl.get("ppv")), ci_text(c.get("precision")), w(wl.get("npv"))])
    pooled = pt.get("wilson") or {}
    if pooled and len(pt["per_label"]) > 1:
        rows.append(["<b>pooled over labels</b>", w(pooled.get("sensitivity")), "", w(pooled.get("specificity")), "",
                     w(pooled.get("ppv")), "", w(pooled.get("npv"))])
    out = (f"<h3>Intervals from the counts (Wilson score, 95%) beside the bootstrap ({level}%)</h3>"
           "<p>Wilson intervals need only the confusion counts (k of n) and stay valid at small n; the bootstrap intervals also "
           "carry the patient clustering but cannot vary when a label's positives are few or come from few patients.</p>")
    out += html_table(["label", "sensitivity (Wilson)", "sensitivity (bootstrap)", "specificity (Wilson)", "specificity (bootstrap)",
                       "PPV (Wilson)", "PPV (bootstrap)", "NPV (Wilson)"], rows)
    if pooled.get("accuracy"):
        out += f"<p>Accuracy (Wilson): {w(pooled['accuracy'])}.</p>"
    return out


def report_part(kind: str, top_label: bool, ri: ReportInputs) -> ReportPart:
    """Score the split's probabilities into the report's numbers, figures and HTML sections."""
    from medlens.tasks.classification import plots
    from medlens.tasks.classification.calibration import calibration_summary
    from medlens.tasks.classification.metrics import classification_metrics, sweep_thresholds
    from medlens.tasks.classification.uncertainty import bootstrap_ci, curve_bands

    m, sub, probs, probs_raw = ri.manifest, ri.table, ri.scores, ri.raw_scores
    names = m.label_names
    thresholds = m.thresholds or None
    pt = classification_metrics(probs, sub.targets, kind, names, thresholds, groups=sub.groups)
    ci = bootstrap_ci(probs, sub.targets, kind, names, thresholds, groups=sub.groups, n_boot=ri.n_boot, confidence=ri.confidence, seed=ri.seed)
    bands = curve_bands(probs, sub.targets, kind, names, thresholds, groups=sub.groups, n_boot=ri.n_boot, confidence=ri.confidence, seed=ri.seed)
    cs = {
        "temperature": m.temperature, "applied": ri.calibrated, "fit": temperature_record(m.temperature, (m.metrics or {}).get("calibration"), names),
        "calibrated": calibration_summary(probs, sub.targets, kind, names),
        "uncalibrated": calibration_summary(probs_raw, sub.targets, kind, names),
    }
    sweep = None
    val = ri.validation() if kind != "multiclass" and ri.split != "val" else None
    if val is not None:
        vsub, vprobs = val
        sweep = {"split": "val", "required_sensitivity": ri.required_sensitivity,
                 "labels": sweep_thresholds(vprobs, vsub.targets, kind, names, ri.required_sensitivity)}
    th = {"deployed": m.thresholds, "method": (m.metrics or {}).get("threshold_method") or (m.config.get("task_options") or {}).get("threshold_method"),
          "sweep": sweep}
    figs = {
        "roc": plots.roc_png(probs, sub.targets, kind, names, bands=bands),
        "pr": plots.pr_png(probs, sub.targets, kind, names, bands=bands),
        "confusion": plots.confusion_png(pt, names),
        "reliability": plots.reliability_png(probs, sub.targets, kind, uncalibrated_probs=probs_raw if ri.calibrated and not is_one(m.temperature) else None),
    }
    level = int(round(ci["confidence"] * 100))
    unit = "patients/groups" if ci["unit"] == "group" else "samples"
    doc = {"split": ri.split, "calibrated": ri.calibrated, "thresholds": th, "calibration": cs, "curves": bands}
    single = kind == "binary"  # one output: macro, micro and weighted averages are one number, shown once
    sections = [_headline_html(pt, ci, doc, level, unit, single), _per_label_html(pt, ci, level), _operating_points_html(pt, th),
                _calibration_html(cs, figs, top_label), _curves_html(bands, figs)]
    cards = [(headline_label(k, single), ci["headline"].get(k)) for k in ("auroc_macro", "sensitivity_macro", "specificity_macro")]
    cards.append(("ECE", ci["headline"].get("ece")))
    return ReportPart(metrics=pt, ci=ci, cards=cards, sections=sections, json={"curves": bands, "thresholds": th, "calibration": cs},
                      warnings=list(pt.get("warnings", [])), interval_note=f"{ci['method']}, {ci['n_boot']} replicates, seed {ci['seed']}, unit {ci['unit']}")


def headline_label(key: str, single: bool) -> str:
    """A headline metric's name; with one output (binary) the ``(macro)`` is dropped: there is nothing to average.

    Example:
        >>> headline_label("auroc_macro", True), headline_label("auroc_macro", False)
        ('AUROC', 'AUROC (macro)')
    """
    name = HEADLINE_LABELS.get(key, key)
    return name.replace(" (macro)", "") if single else name


def _headline_html(pt: dict[str, Any], ci: dict[str, Any], doc: dict[str, Any], level: int, unit: str, single: bool = False) -> str:
    parts: list[str] = []
    parts.append(f"<h2>Headline metrics ({esc(doc['split'])} split)</h2>")
    parts.append(f"<p>{level}% confidence intervals: percentile bootstrap, {ci['n_boot']} replicates resampling {ci['n_units']} {unit}"
                 + (" (all images of a patient together)" if ci["unit"] == "group" else "") + f". Decisions at the deployed thresholds; probabilities {'with' if doc['calibrated'] else 'without'} temperature scaling.</p>")
    rows = []
    for k, e in ci["headline"].items():
        if single and k.endswith(("_micro", "_weighted")):
            continue  # the same number as the macro row for one output
        rows.append([esc(headline_label(k, single)) + f' <span class="muted">{esc(k)}</span>', ci_text(e), fmt(e["n_valid"], 0)])
    parts.append(html_table(["metric", f"value ({level}% CI)", "valid replicates"], rows))
    parts.append(f"<p class=muted>Totals over all labels: TP {pt.get('tp')}, FP {pt.get('fp')}, TN {pt.get('tn')}, FN {pt.get('fn')}.</p>")

    return "".join(parts)


def _per_label_html(pt: dict[str, Any], ci: dict[str, Any], level: int) -> str:
    parts: list[str] = []
    parts.append("<h2>Per label</h2>")
    rows = []
    for lb, d in pt["per_label"].items():
        c = ci["per_label"].get(lb, {})
        flag = ""
        if d.get("support") == 0:
            flag = ' <span class="notmet" title="no positives: AUROC, AP and sensitivity are undefined">&#9888;</span>'
        elif d.get("auroc") is not None and d["auroc"] < 0.5:
            flag = ' <span class="notmet" title="AUROC below 0.5: the score may be inverted">&#9888;</span>'
        elif d.get("small_sample"):
            flag = ' <span class="notmet" title="too few positives or patients: the bootstrap cannot vary; see the Wilson intervals">&#9888;</span>'
        rows.append([
            esc(lb) + flag, fmt(d.get("support")), fmt(d.get("n")), fmt(d.get("prevalence")),
            ci_text(c.get("auroc")), ci_text(c.get("average_precision")), ci_text(c.get("sensitivity")),
            ci_text(c.get("specificity")), fmt(d.get("precision")), fmt(d.get("f1")),
            fmt(d.get("threshold")) if "threshold" in d else "argmax",
            f"{d.get('tp')}/{d.get('fp')}/{d.get('tn')}/{d.get('fn')}",
        ])
    parts.append(html_table(["label", "positives", "known", "prevalence", "AUROC", "AP", "sensitivity", "specificity",
                             "precision", "F1", "threshold", "TP/FP/TN/FN"], rows))
    parts.append(wilson_html(pt, ci, level))
    small = [w for lb, d in pt["per_label"].items() if d.get("small_sample") for w in pt.get("warnings", []) if w.startswith(f"label {lb!r} has {d.get('support')} positive")]
    parts.extend(f'<div class="warn">{esc(w)}</div>' for w in small)

    return "".join(parts)


def _operating_points_html(pt: dict[str, Any], th: dict[str, Any]) -> str:
    parts: list[str] = []
    parts.append("<h2>Operating points</h2>")
    if th["deployed"]:
        parts.append(f"<p>Deployed thresholds (in the bundle; chosen on validation by <b>{esc(th['method'] or 'n/a')}</b>): "
                     + ", ".join(f"{esc(lb)} {fmt(t)}" for lb, t in zip(pt["per_label"], th["deployed"], strict=False)) + ".</p>")
    else:
        parts.append("<p>Decisions use the arg-max class (multiclass) or 0.5.</p>")
    sw = th.get("sweep")
    if sw:
        rs = sw["required_sensitivity"]
        parts.append(f"<p>Threshold sweep on the <b>{esc(sw['split'])}</b> split (thresholds should be chosen there, not on the reported split). Each cell: threshold &rarr; sensitivity / specificity.</p>")
        rows = []
        for lb, s in sw["labels"].items():
            def cell(p):
                return "n/a" if p is None else f"{fmt(p['threshold'])} &rarr; {fmt(p['sensitivity'], 2)} / {fmt(p['specificity'], 2)}"
            rows.append([esc(lb), cell(s["max_f1"]), cell(s["youden"]), cell(s["sensitivity"])])
        parts.append(html_table(["label", "max F1", "max Youden's J", f"sensitivity &ge; {fmt(rs, 2)}"], rows))

    return "".join(parts)


def _calibration_html(cs: dict[str, Any], figs: dict[str, bytes | None], top_label: bool) -> str:
    parts: list[str] = []
    parts.append("<h2>Calibration</h2>")
    parts.append(temperature_html(cs))
    parts.append(f"<p>ECE {fmt(cs['calibrated']['ece'])} with temperature, {fmt(cs['uncalibrated']['ece'])} without; "
                 f"Brier {fmt(cs['calibrated']['brier'])} / {fmt(cs['uncalibrated']['brier'])}.</p>")
    what = ("Accuracy of the arg-max class against its probability (top-label calibration)" if top_label
            else "Observed frequency of positives against the predicted probability (all known labels pooled)")
    parts.append(html_img(figs.get("reliability"), "reliability diagram", f"{what}, in equal-width bins; the histogram shows how many predictions fall in each bin."))

    return "".join(parts)


def _curves_html(cv: dict[str, Any] | None, figs: dict[str, bytes | None]) -> str:
    parts: list[str] = []
    parts.append("<h2>Curves</h2>")
    cv = cv or {}
    band = (f" Shaded: {int(round(100 * cv.get('confidence', 0.95)))}% bootstrap band ({cv.get('n_boot')} replicates resampling "
            f"{'patients/groups' if cv.get('unit') == 'group' else 'samples'}); red dot: the deployed operating point.") if cv else ""
    parts.append("<h3>ROC curves</h3>" + html_img(figs.get("roc"), "ROC curves per label", esc("Band: TPR at fixed false positive rates.") + esc(band) if band else ""))
    parts.append("<h3>Precision-recall curves</h3>" + html_img(figs.get("pr"), "precision-recall curves per label", "The dashed line is the prevalence (a random classifier's precision)." + (esc(" Band: interpolated precision at fixed recall." + band) if band else "")))
    parts.append("<h3>Confusion matrices</h3>" + html_img(figs.get("confusion"), "confusion matrices", "Rows: true class; columns: predicted; counts and row shares."))
    return "".join(parts)
