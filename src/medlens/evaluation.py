"""Evaluate a bundle on a split of its dataset: ``medlens evaluate BUNDLE --split test``.

Probabilities come from :class:`medlens.inference.Predictor` -- the same code path as ``medlens predict`` --
so the scores evaluated here are exactly the ones a user gets for the same images.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import write_json_atomic
from medlens.bundle import Bundle, load_bundle
from medlens.config import RunConfig, config_from_dict, load_config
from medlens.data.samples import SampleTable
from medlens.data.splits import Splits, config_fold_splits, split_indices
from medlens.inference import Predictor
from medlens.subgroups import subgroup_columns, subgroup_performance
from medlens.tasks import Task, read_table, task_of

log = logging.getLogger("medlens.evaluate")


@dataclass
class EvalResult:
    """Metrics and the raw scores behind them."""

    split: str
    metrics: dict[str, Any]
    probs: np.ndarray
    targets: np.ndarray
    ids: list[str]
    groups: list[str | None] | None = None


def check_own_data_unseen(manifest: Any, path: Any) -> None:
    """Refuse to score a k-fold ensemble on its saved config's data when every row of it trained a member."""
    ens = (manifest.extra or {}).get("ensemble") or {}
    if ens and not ens.get("held_out", False):
        raise ValueError(f"{path}: this k-fold ensemble was trained on every row of its data, so no split of it is unseen; "
                         "evaluate it on other data with --config, or build it with data.split.cv_holdout: auto")


def dataset_splits(cfg: RunConfig, allow_group_leakage: bool | None = None) -> tuple[SampleTable, Splits]:
    """Read the dataset of a config and split it exactly as training did (deterministic by seed)."""
    table = read_table(cfg)
    s = cfg.data.split
    if s.method == "kfold":  # a cross-validation fold's bundle (medlens cv) re-creates its fold
        return table, config_fold_splits(table, s)
    splits = split_indices(
        table, method=s.method, val_fraction=s.val_fraction, test_fraction=s.test_fraction, seed=s.seed,
        allow_group_leakage=s.allow_group_leakage if allow_group_leakage is None else allow_group_leakage,
    )
    return table, splits


def score_table(predictor: Predictor, table: SampleTable, split: str = "", progress: bool = False) -> EvalResult:
    """Predict every row of ``table`` and compute metrics at the manifest's thresholds."""
    probs = predictor.predict_table(table, progress=progress)
    metrics = predictor.task.metrics(probs, table.targets, predictor.manifest, groups=table.groups)
    ood = getattr(predictor, "ood", None)
    if ood is not None and len(table):  # the gate on this split: in-distribution images it flags (about 1 - val_pass)
        scores = predictor.ood_scores_table(table)
        metrics["ood"] = {"method": ood.method, "threshold": ood.threshold, "n": int(len(scores)),
                          "flagged": int(np.sum(scores > ood.threshold)), "flagged_fraction": float(np.mean(scores > ood.threshold))}
    elif predictor.task.supports_ood and predictor.manifest.ood is None:
        metrics["ood"] = None  # the bundle has no gate (trained without one)
    return EvalResult(
        split, metrics, probs, table.targets, [str(i) for i in table.ids],
        None if table.groups is None else list(table.groups),
    )


#: where ``evaluate`` takes its thresholds from
THRESHOLD_SOURCES = ("bundle", "val")


def override_keys(overrides: list[str] | None) -> set[str]:
    """The dotted keys that ``--set key=value`` overrides name, old-layout keys under their ``task_options`` name
    (``trainer.fixed_threshold`` -> ``task_options.fixed_threshold``)."""
    from medlens.config import LEGACY_TASK_KEYS

    keys = {item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item}
    return {f"task_options.{LEGACY_TASK_KEYS[k][0]}" if k in LEGACY_TASK_KEYS else k for k in keys}


def resolve_threshold(task: Task, cfg: RunConfig, threshold: float | None, thresholds_from: str, overrides: list[str] | None) -> float | None:
    """The fixed operating point asked for: ``threshold``, or one the task reads from ``--set`` overrides of its own
    options (:meth:`Task.threshold_from_overrides`). A task without thresholds refuses both ways in one line."""
    if thresholds_from not in THRESHOLD_SOURCES:
        raise ValueError(f"thresholds_from must be one of {', '.join(THRESHOLD_SOURCES)}, not {thresholds_from!r}")
    if (threshold is not None or thresholds_from != "bundle") and not task.supports_thresholds:
        what = f"--threshold {threshold:g}" if threshold is not None else "--thresholds-from val"
        raise ValueError(f"{what}: {task.no_thresholds_reason()}")
    if threshold is None:
        threshold = task.threshold_from_overrides(task.options(cfg), override_keys(overrides), thresholds_from)
    if threshold is not None:
        if thresholds_from != "bundle":
            raise ValueError("--threshold and --thresholds-from val ask for two different operating points; give one")
        if not threshold == threshold:  # NaN
            raise ValueError("--threshold must be a number, not NaN")
    return threshold


def operating_point(
    bundle: Bundle, cfg: RunConfig, threshold: float | None, thresholds_from: str, table: SampleTable, splits: Splits,
    batch_size: int, tta: bool, calibrated: bool,
) -> tuple[Bundle, dict[str, Any]]:
    """The bundle to evaluate (a copy with other thresholds when asked) and the operating point it uses.

    ``threshold``: every label at that score (:meth:`Task.set_threshold`); ``thresholds_from="val"``: thresholds
    tuned again on the validation split by the task (:meth:`Task.refit_thresholds`, the rest of the operating
    point kept). A task without thresholds refuses both with a ``ValueError``.
    """
    task = task_of(bundle.manifest)
    if threshold is None and thresholds_from == "bundle":
        return bundle, {"source": "bundle", "thresholds": list(bundle.manifest.thresholds)}
    if not task.supports_thresholds:
        what = f"--threshold {threshold:g}" if threshold is not None else "--thresholds-from val"
        raise ValueError(f"{what}: {task.no_thresholds_reason()}")
    m = bundle.manifest
    manifest = dataclasses.replace(m, thresholds=list(m.thresholds), task_section=dict(m.task_section or {}) or None)
    copy = Bundle(bundle.model, manifest, bundle.path)
    if threshold is not None:
        task.set_threshold(manifest, float(threshold))
        return copy, {"source": "fixed", "thresholds": list(manifest.thresholds)}
    val = splits.val
    if len(val) == 0:
        raise ValueError("--thresholds-from val: the validation split is empty")
    val_table = table.subset(val)
    predictor = Predictor(copy, batch_size=batch_size, tta=tta, calibrated=calibrated)
    raw_val = predictor.predict_table(val_table, logits=True)
    fitted = task.refit_thresholds(cfg, manifest, raw_val, val_table, predictor) or {}
    return copy, {"source": "val", "thresholds": list(manifest.thresholds), **({"method": fitted["threshold_method"]} if "threshold_method" in fitted else {})}


def evaluate(
    bundle: str | Path | Bundle,
    config: str | Path | RunConfig | None = None,
    split: str = "test",
    out: str | Path | None = None,
    tta: bool = False,
    batch_size: int = 128,
    overrides: list[str] | None = None,
    calibrated: bool = True,
    record: bool = True,
    threshold: float | None = None,
    thresholds_from: str = "bundle",
    subgroups: list[str] | None = None,
) -> EvalResult:
    """Evaluate a bundle on one split (train, val or test) of a dataset.

    Args:
        bundle: bundle folder or a loaded bundle.
        config: the data config (YAML path or RunConfig); default: the config saved in the bundle.
        split: which split to score.
        out: write the metrics JSON here.
        tta: test-time augmentation (horizontal flip).
        calibrated: apply the bundle's temperature (False: raw probabilities, temperature 1).
        record: store the result in the bundle manifest under ``metrics["evaluations"]`` (atomic rewrite).
        threshold: evaluate every label at this operating point (tasks with thresholds; arg-max tasks refuse it).
        thresholds_from: ``bundle`` (the thresholds saved at training) or ``val`` (tuned again on the validation
            split with the config's ``task_options.threshold_method``). The metrics record the operating point used
            under ``operating_point`` (``source`` and ``thresholds``).
        subgroups: metadata columns to report performance per subgroup of (:mod:`medlens.subgroups`, in
            ``metrics["subgroups"]``); None: every metadata column with 2-12 levels; ``[]``: none.

    Example:
        >>> r = evaluate("runs/pneumoniamnist/bundle", split="test")  # doctest: +SKIP
        >>> r.metrics["auroc_macro"]  # doctest: +SKIP
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if config is None:
        if not b.manifest.config:
            raise ValueError("this bundle has no saved config; pass --config")
        check_own_data_unseen(b.manifest, b.path)
        cfg = config_from_dict(b.manifest.config, source=f"{b.path}/manifest.json:config", overrides=overrides)
    elif isinstance(config, RunConfig):
        cfg = config
    else:
        cfg = load_config(config, overrides)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    threshold = resolve_threshold(task_of(b.manifest), cfg, threshold, thresholds_from, overrides)
    table, splits = dataset_splits(cfg, allow_group_leakage=True)
    rows = splits.as_dict()[split]
    if len(rows) == 0:
        raise ValueError(f"the {split} split is empty")
    sub = table.subset(rows)
    if subgroups:  # an unknown column fails before any scoring
        subgroup_columns(sub.metadata, subgroups)
    if b.manifest.label_names != list(table.label_space.names):
        raise ValueError(f"the bundle's labels {b.manifest.label_names} differ from the dataset's {list(table.label_space.names)}")
    b, point = operating_point(b, cfg, threshold, thresholds_from, table, splits, batch_size, tta, calibrated)
    result = score_table(Predictor(b, batch_size=batch_size, tta=tta, calibrated=calibrated), sub, split)
    result.metrics["operating_point"] = point
    sg = subgroup_performance(task_of(b.manifest), result.probs, sub.targets, b.manifest, sub.groups, sub.metadata, subgroups)
    if sg is not None:  # per subgroup of the metadata (None: the task has none, or subgroups=[])
        result.metrics["subgroups"] = sg
    if cfg.targets:  # "AUROC 0.88 in 0.86-0.92: MET", the one target rule (medlens.targets)
        from medlens.targets import format_target_checks

        result.metrics["target_checks"] = format_target_checks(result.metrics, cfg.targets, task_of(b.manifest))
    if out is not None:
        write_json_atomic(Path(out), {"split": split, **result.metrics})
    if record and b.path is not None:
        key = split + ("" if calibrated else "_uncalibrated") + ("_tta" if tta else "")
        source = point["source"]
        key += "" if source == "bundle" else "_val_thresholds" if source == "val" else f"_threshold_{float(threshold or 0.0):g}"
        try:
            record_evaluation(b.path, key, {
                "split": split, "calibrated": calibrated, "tta": tta, "config": "bundle" if config is None else str(getattr(cfg, "name", None) or config),
                "overrides": list(overrides or []), "metrics": result.metrics,
            })
        except OSError as e:  # a read-only bundle (shared model store, container image): the metrics still count
            log.warning("could not record the evaluation in %s/manifest.json (%s); use --no-record or --out", b.path, e.strerror or e)
    return result


def record_evaluation(bundle_dir: str | Path, key: str, entry: dict[str, Any]) -> None:
    """Store an evaluation result in a bundle's manifest (``metrics["evaluations"][key]``), atomically.

    Example:
        >>> record_evaluation("runs/x/bundle", "test", {"split": "test", "metrics": m})  # doctest: +SKIP
    """
    import datetime as _dt

    from medlens.bundle import read_manifest, update_manifest

    metrics = dict(read_manifest(bundle_dir).metrics)
    evaluations = dict(metrics.get("evaluations") or {})
    evaluations[key] = {"evaluated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **entry}
    metrics["evaluations"] = evaluations
    update_manifest(bundle_dir, metrics=metrics)
