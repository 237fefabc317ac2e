"""``medlens cv CONFIG --folds 5``: group-aware, stratified k-fold cross-validation with one report.

Each fold's held-out part comes from :func:`medlens.data.splits.kfold_indices` (groups never straddle folds;
binary/multiclass stratified by class, multi-label by iterative stratification). Inside a fold, the
remaining rows are split once more, group-wise, into training and an inner validation part
(``data.split.val_fraction`` of them) that picks the checkpoint, fits the temperature and tunes thresholds --
so the held-out fold is scored like a test set, never used for any choice.

By default (``data.split.cv_holdout: none``) the folds cover all rows of the dataset (``data.max_samples``
applies) and a dataset's own train/val/test split is ignored. ``cv_holdout: auto`` (or another split method)
splits the data that way first and folds over its train + val rows only: its test rows stay out of every fold,
for one final reading. A fold's bundle saves ``data.split: {method: kfold, folds: k, fold: i, cv_holdout}``, so
``medlens evaluate`` and ``medlens report`` on it re-create exactly that fold (:func:`fold_splits`).

``ensemble=True`` (``medlens cv --ensemble``) also writes the folds' models as one bundle, ``ensemble/``: the
mean of the members' calibrated probabilities, thresholds by ``trainer.threshold_method`` on the pooled
out-of-fold probabilities (:mod:`medlens.ensemble`). With a held-out split its ``data.split`` is that split, so
``medlens evaluate ensemble --split test`` reads the held-out rows, which no member saw; without one every row
trained a member, and evaluating it on its own data is refused.

Output (``<output.dir>/<name>/``)::

    fold0/ ... fold{k-1}/   ordinary run folders (bundle/, metrics.json, ...)
    ensemble/               with --ensemble: the folds' models as one bundle
    cv.json                 per-fold metrics, mean and std per metric, pooled out-of-fold metrics, fold plan
    report.html             one self-contained report
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.config import RunConfig
from medlens.data.splits import check_disjoint_folds, cv_plan, groups_of
from medlens.tasks import Task

log = logging.getLogger("medlens.cv")

#: headline metrics summarised over folds (those present for the task)
CV_METRICS = (
    "auroc_macro", "average_precision_macro", "sensitivity_macro", "specificity_macro", "f1_macro", "accuracy",
    "auroc_micro", "exact_match", "hamming_accuracy", "ece", "brier",
)


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    v = np.asarray([x for x in values if isinstance(x, (int, float))], dtype=np.float64)
    return {
        "mean": float(v.mean()) if len(v) else None,
        "std": float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) == 1 else None),
        "n_folds": int(len(v)),
        "values": [None if x is None else float(x) for x in values],
    }


@dataclass
class CVResult:
    """What ``medlens cv`` produced."""

    cv_dir: Path
    folds: list[dict[str, Any]]
    summary: dict[str, Any]
    per_label: dict[str, dict[str, Any]]
    pooled: dict[str, Any]
    report: Path | None = None
    json_path: Path | None = None
    wall_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _fold_config(cfg: RunConfig, cv_dir: Path, folds: int, fold: int) -> RunConfig:
    c = cfg.model_copy(deep=True)
    c.data.split.method = "kfold"
    c.data.split.folds = folds
    c.data.split.fold = fold
    c.output.dir = str(cv_dir)
    c.output.name = f"fold{fold}"
    c.output.overwrite = True
    return c


def cross_validate(
    cfg: RunConfig,
    folds: int | None = None,
    out: str | Path | None = None,
    report: bool = True,
    ensemble: bool = False,
) -> CVResult:
    """Train and score one model per fold; summarise as mean +- std and write ``cv.json`` and ``report.html``.

    Args:
        cfg: the run config (``data.split.seed`` seeds the folds, ``val_fraction`` sizes the inner validation).
        folds: number of folds (default ``data.split.folds``).
        out: the cross-validation folder (default ``<output.dir>/<output.name or name>``).
        report: write the HTML report.
        ensemble: also write ``ensemble/``, the folds' models as one bundle (:func:`medlens.ensemble.build_ensemble`).

    Returns:
        :class:`CVResult`.

    Example:
        >>> from medlens.config import load_config
        >>> r = cross_validate(load_config("configs/breastmnist_cv.yaml"), folds=5)  # doctest: +SKIP
        >>> r.summary["auroc_macro"]["mean"], r.summary["auroc_macro"]["std"]  # doctest: +SKIP
    """
    from medlens._atomic import write_json_atomic
    from medlens.tasks import read_table, task_of
    from medlens.training import run_dir_for, train

    t0 = time.perf_counter()
    k = int(folds or cfg.data.split.folds)
    s = cfg.data.split
    cv_dir = Path(out) if out is not None else run_dir_for(cfg)
    cv_dir.mkdir(parents=True, exist_ok=True)
    table = read_table(cfg)
    task_obj = task_of(table)
    if not task_obj.supports_cv:
        raise ValueError(f"medlens cv does not support task {task_obj.name!r}")
    if ensemble and task_obj.ensemble_activation is None:
        raise ValueError(f"medlens cv --ensemble: {task_obj.name} models cannot be ensembled")
    plan, held = cv_plan(table, k, s.seed, s.val_fraction, s.cv_holdout, s.test_fraction, s.allow_group_leakage)
    n_cv = len(table) if held is None else len(held.train) + len(held.val)
    log.info("cv: %d folds over %d samples (%s groups)%s", k, n_cv, "no" if table.groups is None else len(set(table.groups.tolist())),
             "" if held is None else f"; {len(held.test)} test rows held out ({s.cv_holdout} split)")
    fold_rows: list[dict[str, Any]] = []
    oof_probs: list[np.ndarray] = []
    oof_targets: list[np.ndarray] = []
    oof_fold: list[np.ndarray] = []
    for f, splits in enumerate(plan):
        fc = _fold_config(cfg, cv_dir, k, f)
        log.info("cv: fold %d/%d (train %d, inner val %d, held-out %d)", f + 1, k, len(splits.train), len(splits.val), len(splits.test))
        res = train(fc, splits=splits, table=table)
        test = res.metrics.get("test") or {}
        fold_rows.append({
            "fold": f, "run_dir": str(res.run_dir), "bundle": str(res.bundle_dir),
            "sizes": splits.sizes(),
            "groups": {name: len(groups_of(table, rows)) for name, rows in splits.as_dict().items()},
            "held_out_ids": [str(i) for i in table.ids[splits.test]],
            "metrics": test, "val_metrics": res.metrics.get("val") or {},
            "train_time_s": round(res.train_time_s, 2),
        })
        pred = np.load(res.run_dir / "predictions.npz")
        oof_probs.append(pred["test_probs"])
        oof_targets.append(pred["test_targets"])
        oof_fold.append(np.full(len(pred["test_probs"]), f))
    names = list(table.label_space.names)
    task = table.label_space.task
    per_fold = [r["metrics"] for r in fold_rows]
    summary = {m: _mean_std([pf.get(m) for pf in per_fold]) for m in CV_METRICS if any(m in pf for pf in per_fold)}
    scored = list(per_fold[0].get("per_label", {})) if per_fold else []
    per_label = {
        lb: {m: _mean_std([pf.get("per_label", {}).get(lb, {}).get(m) for pf in per_fold]) for m in ("auroc", "average_precision", "sensitivity", "specificity", "f1")}
        for lb in scored
    }
    # pooled out-of-fold predictions: every sample scored once, by the model that never saw it (each fold with
    # its own threshold, so pooled threshold metrics use 0.5 and mainly AUROC/AP are meaningful here)
    pooled = task_obj.epoch_metrics(np.concatenate(oof_probs), np.concatenate(oof_targets), names)
    check_disjoint_folds(table, [plan[f].test for f in range(k)])
    ensemble_dir = None
    if ensemble:
        ensemble_dir = _write_ensemble(cfg, cv_dir, fold_rows, np.concatenate(oof_probs), np.concatenate(oof_targets), pooled, held)
    result = CVResult(cv_dir, fold_rows, summary, per_label, pooled, wall_time_s=time.perf_counter() - t0)
    if ensemble_dir is not None:
        result.extra["ensemble"] = ensemble_dir
    doc = {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config_name": cfg.name or cfg.output.name, "task": task, "label_names": names, "folds": k,
        "seed": s.seed, "inner_val_fraction": s.val_fraction, "num_samples": len(table),
        "num_groups": None if table.groups is None else int(len(set(table.groups.tolist()))),
        "group_disjoint_folds": True,
        "held_out": None if held is None else {"method": held.method, "cv_holdout": s.cv_holdout, "rows": int(len(held.test)),
                                               "note": "in no fold; read only by evaluating the ensemble bundle"},
        "ensemble": None if ensemble_dir is None else str(ensemble_dir),
        "summary": summary, "per_label": per_label, "pooled_out_of_fold": pooled,
        "fold_results": fold_rows, "targets": _target_rows(cfg.targets, summary, task_obj),
        "wall_time_s": round(result.wall_time_s, 2),
    }
    result.json_path = cv_dir / "cv.json"
    write_json_atomic(result.json_path, doc)
    if report:
        from medlens.report import write_cv_report

        result.report = write_cv_report(doc, cv_dir / "report.html")
    log.info("cv: done in %.1f s; %s", result.wall_time_s, result.json_path)
    return result


def _write_ensemble(cfg: RunConfig, cv_dir: Path, fold_rows: list[dict[str, Any]], oof_probs: np.ndarray, oof_targets: np.ndarray,
                    pooled: dict[str, Any], held: Any) -> Path:
    """``cv_dir/ensemble``: the folds' bundles as one (see the module docstring for its data split)."""
    from medlens.ensemble import build_ensemble

    ec = cfg.model_copy(deep=True)
    ec.output.dir, ec.output.name = str(cv_dir), "ensemble"
    if held is not None:  # the ensemble's own data: the held-out split (its test rows were in no fold)
        ec.data.split.method = ec.data.split.cv_holdout
    else:  # every row trained a member: nothing of this data is left to test it on (evaluation refuses)
        ec.data.split.method = "kfold"
    metrics = {"cv_pooled_out_of_fold": pooled, "note": "out-of-fold figures of the members; the ensemble itself is not scored here"}
    extra = {"name": "ensemble", "data_summary": {"folds": len(fold_rows), "held_out_rows": None if held is None else int(len(held.test))}}
    trained_on = "all rows" if held is None else f"train + val rows of the {held.method} split (its test rows held out)"
    return build_ensemble([r["bundle"] for r in fold_rows], cv_dir / "ensemble", ec, oof_probs, oof_targets, metrics, extra,
                          provenance={"trained_on": trained_on, "held_out": held is not None})


def _target_rows(targets: dict[str, Any], summary: dict[str, Any], task: Task) -> list[dict[str, Any]]:
    from medlens.targets import check_targets  # the one target rule (bounds and ranges)

    means = {name: (summary.get(name) or {}).get("mean") for name in targets}
    return [{k: r[k] for k in ("metric", "target", "min", "max", "value", "met", "direction")}
            for r in check_targets(targets, {k: v for k, v in means.items() if v is not None}, task=task)]
