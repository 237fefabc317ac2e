"""``medlens.train(cfg)``: data -> split -> train -> thresholds -> evaluate -> bundle.

Run folder layout (``<output.dir>/<name>/``)::

    config.yaml        the resolved config, written before training starts
    environment.json   reproducibility record (seed, package versions, git commit, hardware, launch)
    tracking.json      where the trackers wrote (MLflow URI and run id, TensorBoard/CSV folders)
    checkpoints/       best.ckpt and last.ckpt (Lightning, for resume; atomic writes); top/ and every/ with
                       trainer.save_top_k and trainer.checkpoint_every_n_epochs
    logs/              tracker output (csv, tensorboard, ...)
    history.csv        per-epoch validation metrics
    metrics.json       final validation and test metrics
    bundle/            model.safetensors + manifest.json (written last, atomically)
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens._atomic import atomic_open, write_json_atomic, write_text_atomic
from medlens.bundle import Bundle, Manifest, save_bundle
from medlens.config import ConfigError, RunConfig, dump_config
from medlens.data.dataset import (
    ImageDataset,
    default_cache_mb,
    default_num_workers,
    make_loader,
    weighted_sampler,
)
from medlens.data.samples import SampleTable
from medlens.data.splits import LeakageError, Splits, config_fold_splits, find_group_leaks, split_indices
from medlens.data.stream import ShardStream, StreamLoader, is_streamed
from medlens.data.transforms import build_augment, make_transform, preprocessing_from_config
from medlens.evaluation import EvalResult, score_table
from medlens.inference import Predictor
from medlens.provenance import GENERATED_KEY, training_data_record
from medlens.registry import did_you_mean
from medlens.subgroups import subgroup_performance
from medlens.targets import format_target_checks
from medlens.tasks import read_table, task_for_config, task_of

log = logging.getLogger("medlens.train")


@dataclass
class RunResult:
    """What a training run produced."""

    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None
    data_summary: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    train_time_s: float = 0.0


def run_dir_for(cfg: RunConfig) -> Path:
    """The run folder ``output.dir / (output.name or name)``; a name that escapes ``output.dir`` is refused."""
    from medlens.runfolder import contained_run_dir

    return contained_run_dir(cfg.output.dir, cfg.output.name or cfg.name or "run")


def prepare_data(cfg: RunConfig, table: SampleTable | None = None, splits: Splits | None = None):
    """Read (as the task sees it) and split the dataset; refuse group leakage unless allowed."""
    table = read_table(cfg) if table is None else table
    s = cfg.data.split
    if splits is None and s.method == "kfold":  # one fold of `medlens cv` (train/inner val/held-out as test)
        splits = config_fold_splits(table, s)
    if splits is None:
        splits = split_indices(table, s.method, s.val_fraction, s.test_fraction, s.seed, s.allow_group_leakage)
    leaks = find_group_leaks(table, splits)
    if leaks and not s.allow_group_leakage:
        raise LeakageError(f"{table.source}: {len(leaks)} groups appear in more than one split, e.g. {list(leaks)[:5]}")
    if len(splits.train) == 0:
        raise ValueError(f"{table.source}: the training split is empty")
    if len(splits.val) == 0:
        raise ValueError(f"{table.source}: the validation split is empty; set data.split.val_fraction > 0")
    for note in splits.notes:
        log.info("split: %s", note)
    return table, splits


def build_datasets(cfg: RunConfig, table: SampleTable, splits: Splits, meta_encoder=None, train_rows: np.ndarray | None = None):
    """Preprocessing and one dataset per split (``train_rows``: the rows the task trains on, default all).

    Image cache (tables read from files; in-memory tables hold their pixels already):

    * ``data.cache_images: auto`` decodes and resizes as many images as fit in ``data.cache_mb`` (default
      :func:`~medlens.data.dataset.default_cache_mb`: 25 % of the available memory, at most 4096 MB; ``0``: no
      cache), train rows first, then validation, then test; the rest is read from disk on every access.
    * ``true`` caches every image whatever it costs (the user asked for it; the size is logged);
      ``false`` caches none. A ``data.cache_mb`` next to ``true``/``false`` could not act and is refused.

    Returns:
        (preprocessing, {split: ImageDataset}, whether every row is in memory -- then loading needs no workers).
    """
    d = cfg.data
    if d.cache_mb is not None and d.cache_images != "auto":
        raise ValueError(f"data.cache_mb: applies to cache_images: auto only (cache_images: {str(d.cache_images).lower()} "
                         f"caches {'every' if d.cache_images else 'no'} image); remove one of the two")
    # bytes the cache may hold (None: no limit)
    budget = None if d.cache_images is True else (default_cache_mb() if d.cache_mb is None else d.cache_mb) * 2**20
    cache = d.cache_images is not False and (budget is None or budget > 0) and not table.in_memory
    pp = preprocessing_from_config(d)
    from medlens.data.diskcache import disk_cache_for

    disk = disk_cache_for(d, table, pp.image_size, pp.channels)  # data.disk_cache: decoded images kept between runs
    aug = build_augment(d.augment, d.channels, d.color_augment, d.augment_backend)
    enc = meta_encoder.transform_table if meta_encoder is not None else None
    parts = splits.as_dict()
    if train_rows is not None:
        parts["train"] = train_rows
    sets = {}
    for name in sorted(parts, key=lambda k: {"train": 0, "val": 1}.get(k, 2)):  # the rows read every epoch first
        sub = table.subset(parts[name])
        tf = make_transform(pp, aug if name == "train" else None)
        left = None if budget is None else max(budget - sum(s.cache_nbytes for s in sets.values()), 0)
        streamed = name == "train" and is_streamed(sub)  # read as a stream each epoch (kind: webdataset), never cached
        sets[name] = ImageDataset(sub, tf, pp, cache=cache and not streamed, on_bad_image=d.on_bad_image, metadata_encoder=enc,
                                  cache_bytes=left, disk_cache=disk)
    n_rows = sum(len(s) for s in sets.values())
    n_cached = sum(s.cached for s in sets.values())
    if not table.in_memory:
        used = sum(s.cache_nbytes for s in sets.values()) / 2**20
        limit = "no limit (cache_images: true)" if budget is None else f"budget {budget / 2**20:.0f} MB"
        log.info("image cache: %d of %d images in memory (%.1f MB, %s)%s", n_cached, n_rows, used, limit,
                 "" if n_cached == n_rows else "; the rest are read from disk each time")
    return pp, sets, table.in_memory or (cache and n_cached == n_rows)


def train(cfg: RunConfig, resume: str | None = None, splits: Splits | None = None, table: SampleTable | None = None, callbacks: list | None = None) -> RunResult:
    """Train a model from a config and write its bundle: read -> split -> fit -> operating point -> evaluate -> save.

    The task (classification or anomaly, from the data) supplies the network, loss, module, operating point and
    metrics; this sequence is the same for every task.

    Args:
        cfg: a validated :class:`RunConfig` (see :func:`medlens.config.load_config`).
        resume: a Lightning checkpoint to continue from (``trainer.auto_resume`` finds ``last.ckpt``).
        splits: precomputed train/val/test rows (e.g. a cross-validation fold) instead of ``data.split``.
        table: an already-read dataset (default: read from ``cfg.data``).
        callbacks: extra Lightning callbacks (e.g. timing or custom logging).

    Returns:
        :class:`RunResult` with the run folder, the bundle folder and final metrics.

    Example:
        >>> from medlens import load_config, train
        >>> result = train(load_config("configs/pneumoniamnist.yaml"))  # doctest: +SKIP
        >>> result.metrics["test"]["auroc_macro"]  # doctest: +SKIP
    """
    import lightning as L

    from medlens.engine.distributed import env_is_global_zero
    from medlens.runfolder import RunLock, check_writable

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)  # keep the console to medlens' own messages
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = run_dir_for(cfg)
    bundle_dir = run_dir / "bundle"
    ckpt_dir = run_dir / "checkpoints"
    resume = resume or cfg.trainer.resume
    if resume is None and cfg.trainer.auto_resume and (ckpt_dir / "last.ckpt").is_file():
        resume = str(ckpt_dir / "last.ckpt")
        log.info("auto_resume: continuing from %s", resume)
    if run_dir.exists() and resume is None and not cfg.output.overwrite and (bundle_dir.exists() or (ckpt_dir / "last.ckpt").exists()):
        raise FileExistsError(f"{run_dir} already holds a run; set output.overwrite: true, a new output.name, or resume")
    # ---- checks that can fail fast do so before any data is read
    from medlens.engine.checkpoint import read_resume

    resume = read_resume(resume)  # read once (weights only); this very object is what the Trainer restores
    early = task_for_config(cfg)
    # without data.task the reader decides the label kind: the task's own options are checked now, the rest once read
    early_task = early(cfg.data.task or early.kinds[0])
    early_task.validate_config(cfg) if cfg.data.task else early_task.options(cfg)
    if cfg.model.pretrained and (not cfg.data.task or early_task.uses_pretrained(cfg)):
        from medlens.models.pretrained import check_input_norm, check_pretrained_available

        check_pretrained_available(cfg.model.backbone, cfg.model.pretrained)
        check_input_norm(cfg.model.pretrained, early_task.input_norm(cfg))
    check_backbone_exists(cfg)
    check_writable(cfg.output.dir)
    lock = None
    if env_is_global_zero():  # under torchrun/SLURM every process runs this; one writes (and holds the lock)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire()
    try:
        return _train_locked(cfg, run_dir, bundle_dir, ckpt_dir, resume, splits, table, callbacks, t0)
    finally:
        if lock is not None:
            lock.release()


def check_backbone_exists(cfg: RunConfig) -> None:
    """An unknown timm backbone is refused before data is read (classification configs)."""
    if cfg.data.task and not task_for_config(cfg)(cfg.data.task).uses_backbone:
        return
    import timm

    if not timm.is_model(cfg.model.backbone):
        name = cfg.model.backbone
        raise ConfigError(f"{cfg.where('model.backbone')}model.backbone: {name!r} is not a timm model"
                          + did_you_mean(name.split(".")[0], timm.list_models(), n=3))


def _train_locked(cfg: RunConfig, run_dir: Path, bundle_dir: Path, ckpt_dir: Path, resume: str | None, splits: Splits | None,
                  table: SampleTable | None, callbacks: list | None, t0: float) -> RunResult:
    from medlens.engine.distributed import env_is_global_zero
    from medlens.engine.fit import fit
    from medlens.engine.trainer import monitor_for
    from medlens.models import create_model
    from medlens.runfolder import restore_interrupted_replace

    run_dir.mkdir(parents=True, exist_ok=True)
    if env_is_global_zero():
        restore_interrupted_replace(bundle_dir)  # a bundle replacement killed half-way: the old bundle goes back
        if resume is None and ckpt_dir.exists():
            # stale checkpoints of an overwritten run must not be picked up (nor kept among its top k)
            for f in [*ckpt_dir.glob("*.ckpt"), *ckpt_dir.glob("top/*.ckpt"), *ckpt_dir.glob("every/*.ckpt")]:
                f.unlink()
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))

    # ---- read -> split (as the task sees the data)
    table, splits = prepare_data(cfg, table, splits)
    space = table.label_space
    task = task_of(space)
    task.validate_config(cfg)
    train_rows = task.training_rows(table, splits.train)
    train_table = table.subset(train_rows)
    meta_encoder = None
    if cfg.data.metadata is not None:
        from medlens.data.metadata import MetadataEncoder

        meta_encoder = MetadataEncoder.fit(train_table, cfg.data.metadata)  # statistics from the training split only
    pp, sets, cached = build_datasets(cfg, table, splits, meta_encoder, train_rows)
    d = cfg.data
    workers = d.num_workers if d.num_workers is not None else default_num_workers(table, cached)
    sampler = weighted_sampler(sets["train"].table, cfg.seed) if d.sampler == "weighted" else None
    if is_streamed(sets["train"].table):  # tar shards: streamed, shards dealt to workers and ranks, exact mid-epoch resume
        stream = ShardStream(sets["train"], d.batch_size, cfg.seed, d.shuffle_buffer, d.timeout_s)
        train_loader = StreamLoader(stream, workers, pin_memory=torch.cuda.is_available())
    else:
        train_loader = make_loader(sets["train"], d.batch_size, True, workers, sampler, cfg.seed, drop_last=len(sets["train"]) > d.batch_size)
    val_loader = make_loader(sets["val"], d.eval_batch_size or d.batch_size * 2, False, workers)

    # ---- fit (one engine for every task)
    arch = task.architecture(cfg, space, meta_encoder)
    model = create_model({**arch, "pretrained": cfg.model.pretrained} if cfg.model.pretrained and task.uses_pretrained(cfg) else arch)
    if getattr(model, "pretrained_info", None):  # provenance of the loaded weights: source and sha256
        arch["pretrained_weights"] = model.pretrained_info
    if cfg.model.checkpoint:
        from medlens.models.classifier import load_backbone_checkpoint

        load_backbone_checkpoint(model, cfg.model.checkpoint)
    monitor = monitor_for(cfg, task.default_monitor())
    module = task.create_module(cfg, model, space, task.create_loss(cfg, train_table, pp), pp, monitor)
    options = task.options(cfg)
    fitted = fit(cfg, module, train_loader, val_loader, run_dir, monitor, resume, callbacks,
                 epoch_line=lambda row: task.epoch_line(row, options))
    if not fitted.is_global_zero:  # DDP: rank 0 alone evaluates (whole val/test sets) and writes the bundle
        return RunResult(run_dir, bundle_dir, {}, fitted.history, None, {}, time.perf_counter() - t0, fitted.train_time_s)
    final_model = create_model(arch)
    final_model.load_state_dict(fitted.state_dict)
    final_model.eval()

    # ---- operating point on validation, through the same Predictor that serves predictions
    manifest = Manifest(
        architecture=arch, label_space=space, preprocessing=pp, config=cfg.redacted_dump(),
        weights_source=fitted.weights_source, intended_use=cfg.intended_use, history=fitted.history,
        metadata_encoder=None if meta_encoder is None else meta_encoder.to_dict(),
        task_section=task.manifest_section(cfg, pp, space, train_table),
    )
    bundle = Bundle(final_model, manifest)
    val_table = table.subset(splits.val)
    predictor = Predictor(bundle, batch_size=128, tta=cfg.trainer.tta)
    raw_val = predictor.predict_table(val_table, logits=True)
    op = task.fit_operating_point(cfg, manifest, raw_val, val_table, predictor)
    ood = fit_ood_gate(cfg, task, predictor, table, train_rows, val_table)

    # ---- evaluate (test read once, at the end)
    results: dict[str, EvalResult] = {"val": score_table(predictor, val_table, "val")}
    if len(splits.test):
        results["test"] = score_table(predictor, table.subset(splits.test), "test")
    final = "test" if "test" in results else "val"
    final_table = table.subset(splits.test if final == "test" else splits.val)
    if final_table.metadata is not None and len(final_table.metadata.columns):
        # per subgroup of the data's metadata (sex, age band, view, ...), stored with the bundle so that /v1/model,
        # the page and the reports can say whether the model fails a group of patients (the task decides the figures)
        sg = subgroup_performance(task, results[final].probs, final_table.targets, manifest, final_table.groups, final_table.metadata)
        if sg is not None:
            results[final].metrics["subgroups"] = sg
    metrics: dict[str, Any] = {k: v.metrics for k, v in results.items()}
    metrics.update(op or {})
    metrics["train_time_s"] = round(fitted.train_time_s, 2)
    manifest.metrics = metrics
    summary = {
        **table.summary(), "splits": splits.sizes(), "split_method": splits.method,
        "train_rows": int(len(train_rows)), "train_rows_left_out": int(len(splits.train) - len(train_rows)),
        "split_label_counts": {k: task.target_summary(table.subset(v)) for k, v in splits.as_dict().items()},
    }
    manifest.training_data = training_data_record(
        manifest.config.get("data", {}), {k: (len(v), table.subset(v).label_counts()) for k, v in splits.as_dict().items()},
        generated=bool((table.provenance or {}).get(GENERATED_KEY)), population=cfg.population, intended_use=cfg.intended_use)
    save_run_outputs(cfg, run_dir, bundle_dir, final_model, manifest, summary, results, fitted.history, fitted.loggers, ood,
                     column=task.history_column)
    wall = time.perf_counter() - t0
    log.info("run %s: bundle at %s (%.1f s)", run_dir, bundle_dir, wall)
    for line in format_target_checks(metrics.get(final) or {}, cfg.targets, task):
        log.info("%s %s", final, line)
    return RunResult(run_dir, bundle_dir, metrics, fitted.history, fitted.best_checkpoint, summary, wall, fitted.train_time_s)


def fit_ood_gate(cfg: RunConfig, task: Any, predictor: Predictor, table: SampleTable, train_rows: np.ndarray, val_table: SampleTable):
    """The out-of-distribution gate (``ood`` section) on the penultimate features of the training rows (a seeded subset
    of ``ood.max_train``), its threshold passing ``ood.val_pass`` of the validation rows; None for tasks without one,
    ``ood.method: none`` or a network without such features (an ensemble)."""
    from medlens.ood import fit_detector

    o = cfg.ood
    if o.method == "none" or not task.supports_ood:
        return None
    if getattr(predictor, "feature_head", None) is None:
        log.info("ood: this network has no penultimate features; the bundle has no out-of-distribution gate")
        return None
    rows = np.asarray(train_rows)
    if len(rows) > o.max_train:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, o.max_train, replace=False))
    t0 = time.perf_counter()
    stages = getattr(predictor.feature_head, "stages", False)
    segments = predictor.model.ood_segments() if stages else None
    det = fit_detector(predictor.features_table(table.subset(rows)), predictor.features_table(val_table), o.method, o.k, o.val_pass,
                       max_bank=o.max_train, seed=cfg.seed, segments=segments)
    predictor.ood = det
    log.info("ood gate: %s on %d-d %s features of %d training images; threshold %.4g lets %.1f%% of %d validation images through (%.1f s)",
             o.method if o.method != "knn" else f"kNN (k={o.k})", det.record["feature_dim"],
             f"stage ({len(segments)} segments)" if stages else "penultimate", len(rows), det.threshold,
             100 * det.record["val_pass_rate"], det.record["n_val"], time.perf_counter() - t0)
    return det


def save_run_outputs(cfg: RunConfig, run_dir: Path, bundle_dir: Path, model: torch.nn.Module, manifest: Manifest, summary: dict[str, Any],
                     results: dict[str, EvalResult], history: list[dict[str, Any]], loggers: list, ood: Any = None,
                     column: Callable[[str], str] | None = None) -> None:
    """What every finished run writes: the bundle, ``metrics.json``, ``history.csv``, ``predictions.npz``, trackers.

    ``column``: the task's name of each per-epoch key in ``history.csv`` (:meth:`Task.history_column`)."""
    from medlens.engine.tracking import finish_tracking

    manifest.extra["data_summary"] = summary
    if (run_dir / "environment.json").is_file():  # the reproducibility record (engine.tracking.RunRecorder)
        manifest.extra["environment"] = json.loads((run_dir / "environment.json").read_text())
    save_bundle(model, manifest, bundle_dir, ood=ood)
    write_json_atomic(run_dir / "metrics.json", manifest.metrics)
    _write_history(run_dir / "history.csv", history, column)
    with atomic_open(run_dir / "predictions.npz", "wb") as f:
        np.savez_compressed(
            f,
            **{f"{k}_{f}": getattr(v, f) for k, v in results.items() for f in ("probs", "targets")},
            **{f"{k}_ids": np.asarray(v.ids, dtype=str) for k, v in results.items()},
            **{f"{k}_groups": np.asarray(["" if g is None else g for g in v.groups], dtype=str) for k, v in results.items() if v.groups is not None},
        )
    finish_tracking(cfg, loggers, run_dir, manifest.metrics)


def _write_history(path: Path, history: list[dict[str, Any]], column: Callable[[str], str] | None = None) -> None:
    if not history:
        return
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    name = column or (lambda k: k)
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[name(k) for k in keys])
        w.writeheader()
        for row in history:
            w.writerow({name(k): v for k, v in row.items()})
