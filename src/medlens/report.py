"""``medlens report RUN_OR_BUNDLE``: one self-contained HTML evaluation report plus ``metrics.json``.

The report answers a reviewer's questions from one file that opens offline (images are embedded as base64
PNG, styles inline, no scripts): what data and which split, how good per finding and overall (with bootstrap
95% confidence intervals that resample patients when the data has patient ids), at which operating points
(the deployed thresholds and a validation sweep: max F1, Youden's J, a required sensitivity), how well
calibrated (ECE, reliability diagram, before/after temperature scaling), and whether the targets named in the
config (``targets: {auroc_macro: 0.86}``) are met.

Scores come from :class:`medlens.predict.Predictor` -- the code path of ``medlens predict`` -- on the split
re-created from the bundle's saved config (:func:`medlens.evaluate.dataset_splits`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import write_text_atomic
from medlens.targets import check_targets
from medlens.tasks import get_task, task_of

log = logging.getLogger("medlens.report")

_HEADLINE_LABELS = {
    "auroc_macro": "AUROC (macro)", "average_precision_macro": "Average precision (macro)",
    "sensitivity_macro": "Sensitivity (macro)", "specificity_macro": "Specificity (macro)",
    "precision_macro": "Precision / PPV (macro)", "f1_macro": "F1 (macro)", "accuracy": "Accuracy",
    "auroc_micro": "AUROC (micro)", "f1_micro": "F1 (micro)", "auroc_weighted": "AUROC (weighted)",
    "exact_match": "Exact match (all labels right)", "hamming_accuracy": "Hamming accuracy",
    "ece": "Expected calibration error", "brier": "Brier score",
}


@dataclass
class ReportResult:
    """Where the report went and what it says."""

    html: Path
    metrics_json: Path
    metrics: dict[str, Any]


# ------------------------------------------------------------------------------------------ HTML helpers
def esc(x: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell; undefined values read 'n/a'."""
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return esc(x)


def ci_text(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.812 (0.771-0.850)' from a bootstrap entry; 'n/a' parts where undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("low") is None:
        return f"{fmt(entry['value'], digits)} <span class=muted>(CI n/a)</span>"
    return f"{fmt(entry['value'], digits)} <span class=ci>({fmt(entry['low'], digits)}&ndash;{fmt(entry['high'], digits)})</span>"


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """A table; cells are inserted as given (format and escape them before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_img(png: bytes | None, alt: str, caption: str = "") -> str:
    """An embedded PNG figure (data URI), or a note when there is none."""
    if not png:
        return f'<p class="muted">{esc(alt)}: not available.</p>'
    b64 = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{b64}">{cap}</figure>'


_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid #e3e7ec;padding-bottom:4px;margin-top:2em}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #dfe3e8;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f0f3f6;text-align:center}td:first-child,th:first-child{text-align:left}
.ci{color:#5b6b7b;font-size:.9em}.muted{color:#8592a0}
.met{color:#0b7a30;font-weight:600}.notmet{color:#b3261e;font-weight:600}
.warn{background:#fff6e0;border-left:4px solid #f0a500;padding:6px 10px;margin:4px 0;font-size:.9em}
.disclaimer{background:#eef4fb;border-left:4px solid #2f6db3;padding:8px 12px;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.card{border:1px solid #dfe3e8;border-radius:6px;padding:10px 14px;min-width:170px}
.card .v{font-size:1.5em;font-weight:600}.card .l{font-size:.8em;color:#5b6b7b}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eef0f3}
figcaption{font-size:.85em;color:#5b6b7b}
code{background:#f0f3f6;padding:1px 4px;border-radius:3px}
"""


def html_page(title: str, body: str) -> str:
    """A complete standalone HTML page (inline CSS, no scripts, no external resources)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


# ------------------------------------------------------------------------------------------ inputs
def resolve_source(source: str | Path) -> tuple[Path, Path | None]:
    """(bundle folder, run folder or None) from a run folder or a bundle folder.

    Example:
        >>> resolve_source("runs/nih_multilabel")  # doctest: +SKIP
        (PosixPath('runs/nih_multilabel/bundle'), PosixPath('runs/nih_multilabel'))
    """
    p = Path(source)
    if (p / "bundle" / "manifest.json").is_file():
        return p / "bundle", p
    if (p / "manifest.json").is_file():
        return p, (p.parent if p.name == "bundle" else None)
    raise FileNotFoundError(f"{p}: neither a run folder (with bundle/) nor a bundle folder (with manifest.json)")


def _is_one(temperature: float | list[float]) -> bool:
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


def _split_summary(table, splits) -> dict[str, Any]:
    out: dict[str, Any] = {"method": splits.method, "sizes": splits.sizes(), "notes": list(splits.notes), "parts": {}}
    from medlens.data.splits import find_group_leaks

    for name, rows in splits.as_dict().items():
        sub = table.subset(rows)
        out["parts"][name] = {
            "n": len(rows),
            "groups": None if sub.groups is None else len({g for g in sub.groups.tolist() if g is not None}),
            "label_counts": sub.label_counts(),
        }
    out["groups_in_two_splits"] = len(find_group_leaks(table, splits))
    return out


# ------------------------------------------------------------------------------------------ main
def build_report(
    source: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    config: str | Path | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    calibrated: bool = True,
    required_sensitivity: float = 0.9,
    batch_size: int = 128,
    overrides: list[str] | None = None,
) -> ReportResult:
    """Score a bundle on a split and write ``report.html`` and ``metrics.json``.

    Args:
        source: a run folder (with ``bundle/``) or a bundle folder.
        out: output folder (default: ``<run folder>/report``, or ``<bundle>/../<bundle name>_report``).
        split: the split to report (``test``; ``val`` when the dataset has no test split).
        config: a data config to use instead of the one saved in the bundle.
        n_boot: bootstrap replicates for the confidence intervals.
        confidence: interval level.
        seed: bootstrap seed.
        calibrated: apply the bundle's temperature (the uncalibrated probabilities are reported alongside).
        required_sensitivity: the sensitivity target of the threshold sweep.
        batch_size: inference batch size.
        overrides: ``section.key=value`` overrides for the config.

    Returns:
        :class:`ReportResult`.

    Example:
        >>> r = build_report("runs/nih_multilabel", n_boot=1000)  # doctest: +SKIP
        >>> r.metrics["ci"]["headline"]["auroc_macro"]  # doctest: +SKIP
    """
    from medlens import plots
    from medlens._atomic import write_json_atomic
    from medlens.bundle import load_bundle
    from medlens.config import config_from_dict, load_config
    from medlens.evaluation import check_own_data_unseen, dataset_splits
    from medlens.inference import Predictor
    from medlens.tasks.classification.calibration import calibration_summary
    from medlens.tasks.classification.metrics import classification_metrics, sweep_thresholds
    from medlens.tasks.classification.uncertainty import bootstrap_ci, curve_bands

    bundle_dir, run_dir = resolve_source(source)
    b = load_bundle(bundle_dir)
    m = b.manifest
    task = task_of(m)
    if not task.supports_report:
        raise ValueError(f"{bundle_dir}: the evaluation report does not cover task {task.name!r} models; use medlens evaluate")
    if config is not None:
        cfg = load_config(config, overrides)
    elif m.config:
        check_own_data_unseen(m, bundle_dir)
        cfg = config_from_dict(m.config, source=f"{bundle_dir}/manifest.json:config", overrides=overrides)
    else:
        raise ValueError(f"{bundle_dir}: the bundle has no saved config; pass --config")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    table, splits = dataset_splits(cfg, allow_group_leakage=True)
    if m.label_names != list(table.label_space.names):
        raise ValueError(f"the bundle's labels {m.label_names} differ from the dataset's {list(table.label_space.names)}")
    parts = splits.as_dict()
    notes: list[str] = []
    if len(parts[split]) == 0:
        if split == "test" and len(parts["val"]):
            notes.append("the dataset has no test split: the validation split is reported (thresholds and temperature were fitted on it, so figures are optimistic)")
            split = "val"
        else:
            raise ValueError(f"the {split} split is empty")
    out_dir = Path(out) if out is not None else (run_dir / "report" if run_dir is not None else bundle_dir.parent / f"{bundle_dir.name}_report")
    names = m.label_names
    thresholds = m.thresholds or None

    raw = Predictor(b, batch_size=batch_size, tta=cfg.trainer.tta, calibrated=False)
    cal = Predictor(b, batch_size=batch_size, tta=cfg.trainer.tta, calibrated=True)
    use = cal if calibrated else raw

    def score(rows: np.ndarray):
        sub = table.subset(rows)
        logits = raw.predict_table(sub, logits=True)
        return sub, use.activation(logits), raw.activation(logits)

    log.info("report: scoring %d %s samples", len(parts[split]), split)
    sub, probs, probs_raw = score(parts[split])
    point = classification_metrics(probs, sub.targets, m.task, names, thresholds, groups=sub.groups)
    log.info("report: %d bootstrap replicates (%s)", n_boot, "by group" if sub.groups is not None else "by sample")
    ci = bootstrap_ci(probs, sub.targets, m.task, names, thresholds, groups=sub.groups, n_boot=n_boot, confidence=confidence, seed=seed)
    bands = curve_bands(probs, sub.targets, m.task, names, thresholds, groups=sub.groups, n_boot=n_boot, confidence=confidence, seed=seed)
    cal_summary = {
        "temperature": m.temperature, "applied": calibrated, "fit": temperature_record(m.temperature, (m.metrics or {}).get("calibration"), names),
        "calibrated": calibration_summary(probs, sub.targets, m.task, names),
        "uncalibrated": calibration_summary(probs_raw, sub.targets, m.task, names),
    }
    sweep = None
    if task.thresholded and split != "val" and len(parts["val"]):
        vsub, vprobs, _ = score(parts["val"])
        sweep = {"split": "val", "required_sensitivity": required_sensitivity,
                 "labels": sweep_thresholds(vprobs, vsub.targets, m.task, names, required_sensitivity)}
    targets = check_targets(cfg.targets, point, ci)
    data = {
        "summary": m.extra.get("data_summary") or {k: v for k, v in table.summary().items() if k != "label_counts"},
        "splits": _split_summary(table, splits),
        "evaluated_split": split,
        "n": len(sub),
        "groups": None if sub.groups is None else len({g for g in sub.groups.tolist() if g is not None}),
    }
    trained_method = (m.metrics or {}).get("threshold_method") or (m.config.get("trainer", {}) or {}).get("threshold_method")
    doc: dict[str, Any] = {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source), "bundle": str(bundle_dir), "name": cfg.name or cfg.output.name,
        "task": m.task, "label_names": names, "split": split, "calibrated": calibrated,
        "architecture": m.architecture, "created": m.created, "weights_sha256": m.weights_sha256,
        "intended_use": m.intended_use, "versions": m.versions,
        "data": data, "metrics": point, "ci": ci, "curves": bands,
        "thresholds": {"deployed": m.thresholds, "method": trained_method, "sweep": sweep},
        "calibration": cal_summary, "targets": targets,
        "training": {"history": m.history, "train_metrics": {k: v for k, v in (m.metrics or {}).items() if k in ("val", "test")}},
        "notes": notes, "warnings": list(point.get("warnings", [])),
    }
    log.info("report: drawing plots")
    figs = {
        "roc": plots.roc_png(probs, sub.targets, m.task, names, bands=bands),
        "pr": plots.pr_png(probs, sub.targets, m.task, names, bands=bands),
        "confusion": plots.confusion_png(point, names),
        "reliability": plots.reliability_png(probs, sub.targets, m.task, uncalibrated_probs=probs_raw if calibrated and not _is_one(m.temperature) else None),
        "training": plots.training_curves_png(m.history),
    }
    html_text = render_report(doc, figs)
    html_path = write_text_atomic(out_dir / "report.html", html_text)
    json_path = out_dir / "metrics.json"
    write_json_atomic(json_path, doc)
    log.info("report: %s", html_path)
    return ReportResult(html_path, json_path, doc)


# ------------------------------------------------------------------------------------------ rendering
def _targets_html(rows: list[dict[str, Any]], value_label: str = "value") -> str:
    if not rows:
        return '<p class="muted">The config names no targets (<code>targets: {auroc_macro: 0.86}</code> adds a check here).</p>'
    out = []
    for r in rows:
        status = "n/a" if r["met"] is None else ('<span class="met">met</span>' if r["met"] else '<span class="notmet">not met</span>')
        extra = []
        if "met_at_ci_bound" in r:
            extra.append("n/a" if r["met_at_ci_bound"] is None else ("yes" if r["met_at_ci_bound"] else "no"))
        out.append([esc(r["metric"]), f"{r['direction']} {fmt(r['target'])}", fmt(r["value"]), status, *extra, esc(r.get("note", ""))])
    headers = ["target", "required", value_label, "status"]
    if rows and "met_at_ci_bound" in rows[0]:
        headers.append("met by CI bound")
    return html_table([*headers, "note"], out)


def _temperature_html(cs: dict[str, Any]) -> str:
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


def _wilson_html(pt: dict[str, Any], ci: dict[str, Any], level: int) -> str:
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


def render_report(doc: dict[str, Any], figs: dict[str, bytes | None]) -> str:
    """The HTML text of a report from its metrics document and PNG figures."""
    pt, ci, names = doc["metrics"], doc["ci"], doc["label_names"]
    level = int(round(ci["confidence"] * 100))
    unit = "patients/groups" if ci["unit"] == "group" else "samples"
    parts: list[str] = []
    parts.append(f"<h1>Evaluation report: {esc(doc['name'] or 'model')}</h1>")
    parts.append(f'<p class="muted">{esc(doc["task"])} model, {len(names)} label(s); {esc(doc["split"])} split; generated {esc(doc["generated"])}; bundle <code>{esc(doc["bundle"])}</code></p>')
    parts.append(f'<div class="disclaimer">{esc(doc["intended_use"])}</div>')
    cards = [("AUROC (macro)", ci["headline"].get("auroc_macro")), ("Sensitivity (macro)", ci["headline"].get("sensitivity_macro")),
             ("Specificity (macro)", ci["headline"].get("specificity_macro")), ("ECE", ci["headline"].get("ece"))]
    parts.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="l">{esc(lbl)}</div><div class="v">{fmt((e or {}).get("value"))}</div>'
        f'<div class="l">{level}% CI {fmt((e or {}).get("low"))}&ndash;{fmt((e or {}).get("high"))}</div></div>'
        for lbl, e in cards) + f'<div class="card"><div class="l">evaluated</div><div class="v">{doc["data"]["n"]}</div><div class="l">samples'
        + (f", {doc['data']['groups']} patients" if doc["data"]["groups"] is not None else "") + "</div></div></div>")
    for n in doc["notes"]:
        parts.append(f'<div class="warn">{esc(n)}</div>')

    # data
    d = doc["data"]
    sp = d["splits"]
    parts.append("<h2>Data and splits</h2>")
    summ = d["summary"]
    parts.append(f"<p>Source <code>{esc(summ.get('source', ''))}</code>: {fmt(summ.get('num_samples'))} samples"
                 + (f", {fmt(summ.get('num_groups'))} patients/groups" if summ.get("num_groups") is not None else ", no patient ids")
                 + f". Split method: <b>{esc(sp['method'])}</b>; groups appearing in two splits: <b>{sp['groups_in_two_splits']}</b>.</p>")
    for n in sp["notes"]:
        parts.append(f'<p class="muted">{esc(n)}</p>')
    split_names = list(sp["parts"])
    rows = [["samples", *[fmt(sp["parts"][s]["n"]) for s in split_names]],
            ["patients/groups", *[fmt(sp["parts"][s]["groups"]) for s in split_names]]]
    for lb in names:
        cells = []
        for s in split_names:
            c = sp["parts"][s]["label_counts"].get(lb, {})
            cells.append(f"{c.get('positive', 0)}" + (f" <span class=muted>(+{c['unknown']} unknown)</span>" if c.get("unknown") else ""))
        rows.append([f"{esc(lb)} positives", *cells])
    parts.append(html_table(["", *split_names], rows))

    # headline
    parts.append(f"<h2>Headline metrics ({esc(doc['split'])} split)</h2>")
    parts.append(f"<p>{level}% confidence intervals: percentile bootstrap, {ci['n_boot']} replicates resampling {ci['n_units']} {unit}"
                 + (" (all images of a patient together)" if ci["unit"] == "group" else "") + f". Decisions at the deployed thresholds; probabilities {'with' if doc['calibrated'] else 'without'} temperature scaling.</p>")
    rows = []
    for k, e in ci["headline"].items():
        rows.append([esc(_HEADLINE_LABELS.get(k, k)) + f' <span class="muted">{esc(k)}</span>', ci_text(e), fmt(e["n_valid"], 0)])
    parts.append(html_table(["metric", f"value ({level}% CI)", "valid replicates"], rows))
    parts.append(f"<p class=muted>Totals over all labels: TP {pt.get('tp')}, FP {pt.get('fp')}, TN {pt.get('tn')}, FN {pt.get('fn')}.</p>")

    # targets
    parts.append("<h2>Targets</h2>")
    parts.append(_targets_html(doc["targets"]))

    # per label
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
    parts.append(_wilson_html(pt, ci, level))
    small = [w for lb, d in pt["per_label"].items() if d.get("small_sample") for w in pt.get("warnings", []) if w.startswith(f"label {lb!r} has {d.get('support')} positive")]
    parts.extend(f'<div class="warn">{esc(w)}</div>' for w in small)

    # thresholds
    parts.append("<h2>Operating points</h2>")
    th = doc["thresholds"]
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

    # calibration
    parts.append("<h2>Calibration</h2>")
    cs = doc["calibration"]
    parts.append(_temperature_html(cs))
    parts.append(f"<p>ECE {fmt(cs['calibrated']['ece'])} with temperature, {fmt(cs['uncalibrated']['ece'])} without; "
                 f"Brier {fmt(cs['calibrated']['brier'])} / {fmt(cs['uncalibrated']['brier'])}.</p>")
    what = ("Accuracy of the arg-max class against its probability (top-label calibration)" if get_task(doc["task"]).top_label
            else "Observed frequency of positives against the predicted probability (all known labels pooled)")
    parts.append(html_img(figs.get("reliability"), "reliability diagram", f"{what}, in equal-width bins; the histogram shows how many predictions fall in each bin."))

    # plots
    parts.append("<h2>Curves</h2>")
    cv = doc.get("curves") or {}
    band = (f" Shaded: {int(round(100 * cv.get('confidence', 0.95)))}% bootstrap band ({cv.get('n_boot')} replicates resampling "
            f"{'patients/groups' if cv.get('unit') == 'group' else 'samples'}); red dot: the deployed operating point.") if cv else ""
    parts.append("<h3>ROC curves</h3>" + html_img(figs.get("roc"), "ROC curves per label", esc("Band: TPR at fixed false positive rates.") + esc(band) if band else ""))
    parts.append("<h3>Precision-recall curves</h3>" + html_img(figs.get("pr"), "precision-recall curves per label", "The dashed line is the prevalence (a random classifier's precision)." + (esc(" Band: interpolated precision at fixed recall." + band) if band else "")))
    parts.append("<h3>Confusion matrices</h3>" + html_img(figs.get("confusion"), "confusion matrices", "Rows: true class; columns: predicted; counts and row shares."))
    parts.append("<h2>Training</h2>")
    parts.append(html_img(figs.get("training"), "training curves"))

    if doc["warnings"]:
        parts.append("<h2>Warnings</h2>" + "".join(f'<div class="warn">{esc(w)}</div>' for w in doc["warnings"]))
    parts.append("<h2>Provenance</h2>")
    arch = doc["architecture"]
    parts.append(html_table(["", ""], [
        ["bundle", f"<code>{esc(doc['bundle'])}</code>"], ["created", esc(doc["created"])],
        ["weights sha256", f"<code>{esc(doc['weights_sha256'])}</code>"],
        ["architecture", esc(f"{arch.get('type')} / {arch.get('backbone')} / {arch.get('image_size')} px / {arch.get('in_chans')} ch")],
        ["versions", esc(", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items()))],
        ["bootstrap", esc(f"{ci['method']}, {ci['n_boot']} replicates, seed {ci['seed']}, unit {ci['unit']}")],
    ]))
    return html_page(f"medlens report: {doc['name'] or 'model'}", "\n".join(parts))


# ------------------------------------------------------------------------------------------ cross-validation
def write_cv_report(doc: dict[str, Any], path: str | Path) -> Path:
    """The HTML report of ``medlens cv``: each fold, mean +- std per metric and per label, pooled out-of-fold.

    Example:
        >>> write_cv_report(json.loads(Path("runs/x/cv.json").read_text()), "runs/x/report.html")  # doctest: +SKIP
    """
    from medlens import plots

    k = doc["folds"]
    summ = doc["summary"]
    metrics = list(summ)
    parts = [f"<h1>Cross-validation: {esc(doc.get('config_name') or 'model')}</h1>",
             f'<p class="muted">{k} folds, {doc["task"]}, {doc["num_samples"]} samples'
             + (f", {doc['num_groups']} patients/groups" if doc.get("num_groups") is not None else ", no patient ids (each sample its own group)")
             + f"; generated {esc(doc['generated'])}</p>",
             "<p>Folds are group-disjoint and stratified; within each fold an inner validation part "
             f"({fmt(doc['inner_val_fraction'], 2)} of the training rows, also group-disjoint) chose the checkpoint, temperature and thresholds, "
             "and the held-out fold was scored once, like a test set. No group appears in two folds' held-out parts: "
             f"<b>{'verified' if doc.get('group_disjoint_folds') else 'NOT verified'}</b>.</p>"]
    parts.append("<h2>Mean &plusmn; std over folds</h2>")
    parts.append(html_table(["metric", "mean &plusmn; std", *[f"fold {i}" for i in range(k)]], [
        [esc(_HEADLINE_LABELS.get(m, m)) + f' <span class="muted">{esc(m)}</span>',
         "n/a" if s["mean"] is None else f"<b>{fmt(s['mean'])}</b> &plusmn; {fmt(s['std'])}", *[fmt(v) for v in s["values"]]]
        for m, s in summ.items()
    ]))
    parts.append(html_img(plots.folds_png([f["metrics"] for f in doc["fold_results"]], [m for m in metrics if m not in ("brier",)]), "metrics per fold"))
    parts.append("<h2>Targets</h2>" + _targets_html(doc.get("targets", []), "mean"))
    parts.append("<h2>Folds</h2>")
    parts.append(html_table(["fold", "train", "inner val", "held-out", "held-out groups", "train time (s)", "bundle"], [
        [str(f["fold"]), fmt(f["sizes"]["train"]), fmt(f["sizes"]["val"]), fmt(f["sizes"]["test"]), fmt(f["groups"]["test"]),
         fmt(f["train_time_s"], 1), f"<code>{esc(f['bundle'])}</code>"] for f in doc["fold_results"]
    ]))
    parts.append("<h2>Per label (mean &plusmn; std over folds)</h2>")
    lm = ("auroc", "average_precision", "sensitivity", "specificity", "f1")
    parts.append(html_table(["label", *lm], [
        [esc(lb), *["n/a" if d[m]["mean"] is None else f"{fmt(d[m]['mean'])} &plusmn; {fmt(d[m]['std'])} <span class=muted>({d[m]['n_folds']}/{k})</span>" for m in lm]]
        for lb, d in doc["per_label"].items()
    ]))
    pooled = doc["pooled_out_of_fold"]
    parts.append("<h2>Pooled out-of-fold</h2><p>Every sample scored once by the fold model that never saw it. "
                 "Each fold has its own temperature and thresholds, so threshold metrics here use 0.5; AUROC and AP are the meaningful ones.</p>")
    parts.append(html_table(["metric", "value"], [[esc(m), fmt(pooled.get(m))] for m in ("auroc_macro", "average_precision_macro", "auroc_micro", "ece")]))
    return write_text_atomic(Path(path), html_page(f"medlens cv: {doc.get('config_name') or 'model'}", "\n".join(parts)))
