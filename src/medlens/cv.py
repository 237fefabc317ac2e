"""``medlens cv CONFIG --folds 5``: group-aware, stratified k-fold cross-validation with one report.

Each fold's held-out part comes from :func:`medlens.data.splits.kfold_indices` (groups never straddle folds;
binary/multiclass stratified by class, multi-label by iterative stratification). Inside a fold, the
remaining rows are split once more, group-wise, into training and an inner validation part
(``data.split.val_fraction`` of them) that picks the checkpoint, fits the temperature and tunes thresholds --
so the held-out fold is scored like a test set, never used for any choice.

The folds cover all rows of the dataset (``data.max_samples`` applies); a dataset's own train/val/test split
is ignored. A fold's bundle saves ``data.split: {method: kfold, folds: k, fold: i}``, so ``medlens evaluate``
and ``medlens report`` on it re-create exactly that fold (:func:`fold_splits`).

Output (``<output.dir>/<name>/``)::

    fold0/ ... fold{k-1}/   ordinary run folders (bundle/, metrics.json, ...)
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
from medlens.data.samples import SampleTable
from medlens.data.splits import Splits, find_group_leaks, kfold_indices, split_indices

log = logging.getLogger("medlens.cv")

#: headline metrics summarised over folds (those present for the task)
CV_METRICS = (
    "auroc_macro", "average_precision_macro", "sensitivity_macro", "specificity_macro", "f1_macro", "accuracy",
    "auroc_micro", "exact_match", "hamming_accuracy", "ece", "brier",
)


class FoldLeakError(ValueError):
    """A group appears in the held-out parts of two folds, or in two parts of one fold."""


def _groups_of(table: SampleTable, rows: np.ndarray) -> set[str]:
    if table.groups is None:
        return {f"__id__{i}" for i in table.ids[rows]}
    return {g if g is not None else f"__id__{i}" for g, i in zip(table.groups[rows], table.ids[rows], strict=True)}


def fold_plan(table: SampleTable, folds: int = 5, seed: int = 0, val_fraction: float = 0.15) -> list[Splits]:
    """One :class:`Splits` per fold: train, inner validation (from the training part), test = the held-out fold.

    Raises :class:`FoldLeakError` if a group would be held out in two folds or straddle a fold's parts.

    Example:
        >>> plan = fold_plan(table, folds=5, seed=0)  # doctest: +SKIP
        >>> [len(s.test) for s in plan]  # doctest: +SKIP
        [156, 156, 156, 156, 156]
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.split.val_fraction must be in (0, 1) for cross-validation (the inner validation share), not {val_fraction}")
    parts = kfold_indices(table, folds, seed)
    plan = []
    for f, (train_rows, test_rows) in enumerate(parts):
        sub = table.subset(train_rows)
        sub.splits = None  # the dataset's own split plays no part in k-fold
        inner = split_indices(sub, method="stratified", val_fraction=val_fraction, test_fraction=0.0, seed=seed + 1000 + f)
        fit_rows = np.concatenate([inner.train, inner.test])  # a zero test share may still get a few rows
        splits = Splits(
            np.sort(train_rows[fit_rows]), np.sort(train_rows[inner.val]), np.sort(test_rows), "kfold",
            [f"fold {f} of {folds}: held-out {len(test_rows)} rows; inner validation {len(inner.val)} rows"],
        )
        leaks = find_group_leaks(table, splits)
        if leaks:
            raise FoldLeakError(f"{table.source}: fold {f}: groups in two parts, e.g. {list(leaks)[:5]}")
        plan.append(splits)
    check_disjoint_folds(table, [s.test for s in plan])
    return plan


def check_disjoint_folds(table: SampleTable, held_out: list[np.ndarray]) -> None:
    """Raise :class:`FoldLeakError` if any group (patient) is in two folds' held-out parts.

    Example:
        >>> check_disjoint_folds(table, [s.test for s in fold_plan(table)])  # doctest: +SKIP
    """
    owner: dict[str, int] = {}
    for f, rows in enumerate(held_out):
        for g in _groups_of(table, np.asarray(rows)):
            if g in owner and owner[g] != f:
                raise FoldLeakError(f"{table.source}: group {g!r} is held out in folds {owner[g]} and {f}")
            owner[g] = f


def fold_splits(table: SampleTable, folds: int, fold: int, seed: int = 0, val_fraction: float = 0.15) -> Splits:
    """The splits of one fold (as training made them); used when a config says ``split.method: kfold``.

    Example:
        >>> s = fold_splits(table, folds=5, fold=2, seed=0)  # doctest: +SKIP
    """
    if not 0 <= fold < folds:
        raise ValueError(f"data.split.fold must be in 0..{folds - 1}, not {fold}")
    return fold_plan(table, folds, seed, val_fraction)[fold]


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
) -> CVResult:
    """Train and score one model per fold; summarise as mean +- std and write ``cv.json`` and ``report.html``.

    Args:
        cfg: the run config (``data.split.seed`` seeds the folds, ``val_fraction`` sizes the inner validation).
        folds: number of folds (default ``data.split.folds``).
        out: the cross-validation folder (default ``<output.dir>/<output.name or name>``).
        report: write the HTML report.

    Returns:
        :class:`CVResult`.

    Example:
        >>> from medlens.config import load_config
        >>> r = cross_validate(load_config("configs/breastmnist_cv.yaml"), folds=5)  # doctest: +SKIP
        >>> r.summary["auroc_macro"]["mean"], r.summary["auroc_macro"]["std"]  # doctest: +SKIP
    """
    from medlens.bundle import write_json_atomic
    from medlens.data.readers import read_dataset
    from medlens.metrics import classification_metrics
    from medlens.training import run_dir_for, train

    t0 = time.perf_counter()
    k = int(folds or cfg.data.split.folds)
    s = cfg.data.split
    cv_dir = Path(out) if out is not None else run_dir_for(cfg)
    cv_dir.mkdir(parents=True, exist_ok=True)
    table = read_dataset(cfg.data)
    if table.label_space.task == "anomaly":
        raise ValueError("medlens cv supports binary, multiclass and multilabel tasks")
    plan = fold_plan(table, k, s.seed, s.val_fraction)
    log.info("cv: %d folds over %d samples (%s groups)", k, len(table), "no" if table.groups is None else len(set(table.groups.tolist())))
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
            "groups": {name: len(_groups_of(table, rows)) for name, rows in splits.as_dict().items()},
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
    pooled = classification_metrics(np.concatenate(oof_probs), np.concatenate(oof_targets), task, names, warn=False)
    check_disjoint_folds(table, [plan[f].test for f in range(k)])
    result = CVResult(cv_dir, fold_rows, summary, per_label, pooled, wall_time_s=time.perf_counter() - t0)
    doc = {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config_name": cfg.name or cfg.output.name, "task": task, "label_names": names, "folds": k,
        "seed": s.seed, "inner_val_fraction": s.val_fraction, "num_samples": len(table),
        "num_groups": None if table.groups is None else int(len(set(table.groups.tolist()))),
        "group_disjoint_folds": True,
        "summary": summary, "per_label": per_label, "pooled_out_of_fold": pooled,
        "fold_results": fold_rows, "targets": _target_rows(cfg.targets, summary),
        "wall_time_s": round(result.wall_time_s, 2),
    }
    result.json_path = cv_dir / "cv.json"
    write_json_atomic(result.json_path, doc)
    if report:
        from medlens.report import write_cv_report

        result.report = write_cv_report(doc, cv_dir / "report.html")
    log.info("cv: done in %.1f s; %s", result.wall_time_s, result.json_path)
    return result


def _target_rows(targets: dict[str, float], summary: dict[str, Any]) -> list[dict[str, Any]]:
    from medlens.metrics import LOWER_IS_BETTER

    rows = []
    for name, target in targets.items():
        mean = (summary.get(name) or {}).get("mean")
        lower = name.split("/")[0] in LOWER_IS_BETTER
        met = None if mean is None else (mean <= target if lower else mean >= target)
        rows.append({"metric": name, "target": target, "value": mean, "met": met, "direction": "<=" if lower else ">="})
    return rows
