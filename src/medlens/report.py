"""``medlens report RUN_OR_BUNDLE``: one self-contained HTML evaluation report plus ``metrics.json``.

The report answers a reviewer's questions from one file that opens offline (images are embedded as base64
PNG, styles inline, no scripts): what data and which split, how good (the task's own part: for a classifier,
per finding and overall with bootstrap intervals that resample patients, operating points and calibration; for
a numeric target, its errors with intervals and agreement plots), whether the targets
named in the config (``targets: {auroc_macro: 0.86}``) are met, how training went, and where the model came from.

Scores come from :class:`medlens.inference.Predictor` -- the code path of ``medlens predict`` -- on the split
re-created from the bundle's saved config (:func:`medlens.evaluation.dataset_splits`). The steps are named:
:func:`load_report_inputs` -> :func:`score_split` -> ``task.report_part`` -> :func:`report_document` ->
:func:`render_report`.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import write_text_atomic
from medlens.htmlkit import esc, fmt, html_img, html_page, html_table
from medlens.runs import resolve_bundle
from medlens.subgroups import subgroup_columns, subgroup_performance, subgroups_html
from medlens.targets import check_targets
from medlens.tasks import ReportInputs, ReportPart, Task, task_of

log = logging.getLogger("medlens.report")

#: names of headline metrics in the cross-validation report
_CV_LABELS = {
    "auroc_macro": "AUROC (macro)", "average_precision_macro": "Average precision (macro)", "f1_macro": "F1 (macro)",
    "accuracy": "Accuracy", "sensitivity_macro": "Sensitivity (macro)", "specificity_macro": "Specificity (macro)",
    "ece": "Expected calibration error",
}


@dataclass
class ReportResult:
    """Where the report went and what it says."""

    html: Path
    metrics_json: Path
    metrics: dict[str, Any]


# ------------------------------------------------------------------------------------------ inputs
def resolve_source(source: str | Path) -> tuple[Path, Path | None]:
    """(bundle folder, run folder or None) from a run folder or a bundle folder.

    Example:
        >>> resolve_source("runs/nih_multilabel")  # doctest: +SKIP
        (PosixPath('runs/nih_multilabel/bundle'), PosixPath('runs/nih_multilabel'))
    """
    return resolve_bundle(source)  # the one rule of every command that reads a bundle


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


@dataclass
class _Loaded:
    bundle: Any
    bundle_dir: Path
    run_dir: Path | None
    cfg: Any
    task: Task
    table: Any
    splits: Any
    split: str
    notes: list[str]


def load_report_inputs(source: str | Path, split: str, config: str | Path | None, overrides: list[str] | None) -> _Loaded:
    """Step 1: the bundle, its task, the config and the dataset split as training split it; the split to report."""
    from medlens.bundle import load_bundle
    from medlens.config import config_from_dict, load_config
    from medlens.evaluation import check_own_data_unseen, dataset_splits

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
            notes.append("the dataset has no test split: the validation split is reported (the operating point was fitted on it, "
                         "so figures are optimistic)")
            split = "val"
        else:
            raise ValueError(f"the {split} split is empty")
    return _Loaded(b, bundle_dir, run_dir, cfg, task, table, splits, split, notes)


def score_split(ld: _Loaded, batch_size: int, calibrated: bool) -> tuple[Any, Any]:
    """Step 2: a scorer of any split's rows -> (rows' table, calibrated or raw scores, raw scores), through the
    predictor that serves ``medlens predict``."""
    from medlens.inference import Predictor

    raw = Predictor(ld.bundle, batch_size=batch_size, tta=ld.cfg.trainer.tta, calibrated=False)
    cal = Predictor(ld.bundle, batch_size=batch_size, tta=ld.cfg.trainer.tta, calibrated=True)
    use = cal if calibrated else raw

    def score(rows: np.ndarray):
        sub = ld.table.subset(rows)
        logits = raw.predict_table(sub, logits=True)
        return sub, use.activation(logits), raw.activation(logits)

    return score, ld.splits.as_dict()


def report_document(ld: _Loaded, part: ReportPart, sub: Any, calibrated: bool, source: str | Path) -> dict[str, Any]:
    """Step 4: the report's JSON document (task part, data, targets, training, provenance)."""
    m = ld.bundle.manifest
    data = {
        "summary": m.extra.get("data_summary") or {k: v for k, v in ld.table.summary().items() if k != "label_counts"},
        "splits": _split_summary(ld.table, ld.splits),
        "evaluated_split": ld.split,
        "n": len(sub),
        "groups": None if sub.groups is None else len({g for g in sub.groups.tolist() if g is not None}),
    }
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source), "bundle": str(ld.bundle_dir), "name": ld.cfg.name or ld.cfg.output.name,
        "task": m.task, "label_names": m.label_names, "split": ld.split, "calibrated": calibrated,
        "architecture": m.architecture, "created": m.created, "weights_sha256": m.weights_sha256,
        "intended_use": m.intended_use, "versions": m.versions,
        "data": data, "metrics": part.metrics, "ci": part.ci, **part.json,
        "targets": check_targets(ld.cfg.targets, part.metrics, part.ci, task=ld.task),
        "training": {"history": m.history, "train_metrics": {k: v for k, v in (m.metrics or {}).items() if k in ("val", "test")}},
        "notes": ld.notes, "warnings": list(part.warnings), "interval_note": part.interval_note,
    }


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
    subgroups: list[str] | None = None,
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
        calibrated: apply the bundle's calibration (the uncalibrated scores are reported alongside).
        required_sensitivity: the sensitivity target of the threshold sweep.
        batch_size: inference batch size.
        overrides: ``section.key=value`` overrides for the config.
        subgroups: metadata columns for the "Subgroups" section (:mod:`medlens.subgroups`); None: every metadata
            column with 2-12 levels; ``[]``: none.

    Returns:
        :class:`ReportResult`.

    Example:
        >>> r = build_report("runs/nih_multilabel", n_boot=1000)  # doctest: +SKIP
        >>> r.metrics["ci"]["headline"]["auroc_macro"]  # doctest: +SKIP
    """
    from medlens import plots
    from medlens._atomic import write_json_atomic

    ld = load_report_inputs(source, split, config, overrides)
    if subgroups:  # an unknown column fails before any scoring
        subgroup_columns(ld.table.metadata, subgroups)
    score, parts = score_split(ld, batch_size, calibrated)
    log.info("report: scoring %d %s samples", len(parts[ld.split]), ld.split)
    sub, scores, raw_scores = score(parts[ld.split])

    def validation():
        if not len(parts["val"]):
            return None
        vsub, vscores, _ = score(parts["val"])
        return vsub, vscores

    part = ld.task.report_part(ReportInputs(ld.bundle.manifest, sub, scores, raw_scores, ld.split, calibrated, n_boot, confidence, seed,
                                            required_sensitivity, validation))
    doc = report_document(ld, part, sub, calibrated, source)
    sg = subgroup_performance(ld.task, scores, sub.targets, ld.bundle.manifest, sub.groups, sub.metadata, subgroups, n_boot=n_boot,
                              confidence=confidence, seed=seed)
    if sg is not None:  # performance per subgroup of the metadata (None: the task has none, or subgroups=[])
        doc["subgroups"] = sg
        if sg["warnings"]:
            doc["warnings"].append(f"{len(sg['warnings'])} subgroup warning(s): see Subgroups")
    html_text = render_report(doc, part, plots.training_curves_png(ld.bundle.manifest.history, ld.task.history_column))
    out_dir = Path(out) if out is not None else (ld.run_dir / "report" if ld.run_dir is not None else ld.bundle_dir.parent / f"{ld.bundle_dir.name}_report")
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


def _data_html(doc: dict[str, Any]) -> str:
    """The data and split table: samples, patients and what each label holds per split (positives, or values)."""
    d, names = doc["data"], doc["label_names"]
    sp = d["splits"]
    summ = d["summary"]
    parts = ["<h2>Data and splits</h2>",
             f"<p>Source <code>{esc(summ.get('source', ''))}</code>: {fmt(summ.get('num_samples'))} samples"
             + (f", {fmt(summ.get('num_groups'))} patients/groups" if summ.get("num_groups") is not None else ", no patient ids")
             + f". Split method: <b>{esc(sp['method'])}</b>; groups appearing in two splits: <b>{sp['groups_in_two_splits']}</b>.</p>"]
    parts.extend(f'<p class="muted">{esc(n)}</p>' for n in sp["notes"])
    split_names = list(sp["parts"])
    rows = [["samples", *[fmt(sp["parts"][s]["n"]) for s in split_names]],
            ["patients/groups", *[fmt(sp["parts"][s]["groups"]) for s in split_names]]]
    for lb in names:
        cells = []
        for s in split_names:
            c = sp["parts"][s]["label_counts"].get(lb, {})
            if "positive" in c:
                cells.append(f"{c.get('positive', 0)}" + (f" <span class=muted>(+{c['unknown']} unknown)</span>" if c.get("unknown") else ""))
            else:  # numeric targets: how many and their mean
                cells.append(f"{fmt(c.get('n'))} <span class=muted>(mean {fmt(c.get('mean'), 1)})</span>")
        rows.append([f"{esc(lb)} {'positives' if any('positive' in sp['parts'][s]['label_counts'].get(lb, {}) for s in split_names) else 'values'}", *cells])
    parts.append(html_table(["", *split_names], rows))
    return "".join(parts)


def render_report(doc: dict[str, Any], part: ReportPart, training_png: bytes | None) -> str:
    """The HTML text of a report from its document, the task's part and the training curves."""
    names = doc["label_names"]
    parts: list[str] = []
    parts.append(f"<h1>Evaluation report: {esc(doc['name'] or 'model')}</h1>")
    parts.append(f'<p class="muted">{esc(doc["task"])} model, {len(names)} label(s); {esc(doc["split"])} split; generated {esc(doc["generated"])}; bundle <code>{esc(doc["bundle"])}</code></p>')
    parts.append(f'<div class="disclaimer">{esc(doc["intended_use"])}</div>')
    level = int(round(100 * float((doc.get("ci") or {}).get("confidence", 0.95))))
    parts.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="l">{esc(lbl)}</div><div class="v">{fmt((e or {}).get("value"))}</div>'
        f'<div class="l">{level}% CI {fmt((e or {}).get("low"))}&ndash;{fmt((e or {}).get("high"))}</div></div>'
        for lbl, e in part.cards) + f'<div class="card"><div class="l">evaluated</div><div class="v">{doc["data"]["n"]}</div><div class="l">samples'
        + (f", {doc['data']['groups']} patients" if doc["data"]["groups"] is not None else "") + "</div></div></div>")
    parts.extend(f'<div class="warn">{esc(n)}</div>' for n in doc["notes"])
    parts.append(_data_html(doc))
    parts.extend(part.sections)
    parts.append(subgroups_html(doc.get("subgroups")))
    parts.append("<h2>Targets</h2>" + _targets_html(doc["targets"]))
    parts.append("<h2>Training</h2>" + html_img(training_png, "training curves"))
    if doc["warnings"]:
        parts.append("<h2>Warnings</h2>" + "".join(f'<div class="warn">{esc(w)}</div>' for w in doc["warnings"]))
    parts.append("<h2>Provenance</h2>")
    arch = doc["architecture"]
    parts.append(html_table(["", ""], [
        ["bundle", f"<code>{esc(doc['bundle'])}</code>"], ["created", esc(doc["created"])],
        ["weights sha256", f"<code>{esc(doc['weights_sha256'])}</code>"],
        ["architecture", esc(f"{arch.get('type')} / {arch.get('backbone')} / {arch.get('image_size')} px / {arch.get('in_chans')} ch")],
        ["versions", esc(", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items()))],
        ["intervals", esc(doc.get("interval_note") or "n/a")],
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
        [esc(_CV_LABELS.get(m, m)) + f' <span class="muted">{esc(m)}</span>',
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
