"""``medlens.train(cfg)``: data -> split -> train -> thresholds -> evaluate -> bundle.

Run folder layout (``<output.dir>/<name>/``)::

    config.yaml        the resolved config, written before training starts
    environment.json   reproducibility record (seed, package versions, git commit, hardware, launch)
    tracking.json      where the trackers wrote (MLflow URI and run id, TensorBoard/CSV folders)
    checkpoints/       best.ckpt and last.ckpt (Lightning, for resume; atomic writes)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens._atomic import atomic_open, write_text_atomic
from medlens.bundle import Bundle, Manifest, save_bundle, write_json_atomic
from medlens.config import RunConfig, dump_config
from medlens.data.dataset import ImageDataset, default_num_workers, make_loader, weighted_sampler
from medlens.data.readers import read_dataset
from medlens.data.samples import SampleTable
from medlens.data.splits import LeakageError, Splits, find_group_leaks, split_indices
from medlens.data.transforms import build_augment, make_transform, preprocessing_from_config
from medlens.evaluate import EvalResult, score_table
from medlens.losses import create_loss, loss_kwargs
from medlens.metrics import tune_thresholds
from medlens.predict import Predictor

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
    name = cfg.output.name or cfg.name or "run"
    return Path(cfg.output.dir) / name


def architecture_for(cfg: RunConfig, num_outputs: int, meta_dim: int = 0, meta_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's architecture dict for a config (``meta_extra``: ``MetadataEncoder.architecture()``)."""
    m = cfg.model
    arch: dict[str, Any] = {
        "type": "classifier", "backbone": m.backbone, "num_outputs": num_outputs, "in_chans": cfg.data.channels,
        "image_size": cfg.data.image_size, "small_input": m.small_input, "drop_rate": m.drop_rate,
        "drop_path_rate": m.drop_path_rate,
    }
    if meta_dim > 0 and cfg.data.metadata is not None:
        arch.update(type="fusion", meta_dim=meta_dim, meta_hidden=list(cfg.data.metadata.hidden), meta_dropout=cfg.data.metadata.dropout)
        arch.update(meta_extra or {})
    return arch


def prepare_data(cfg: RunConfig, table: SampleTable | None = None, splits: Splits | None = None):
    """Read and split the dataset; refuse group leakage unless allowed."""
    table = read_dataset(cfg.data) if table is None else table
    s = cfg.data.split
    if splits is None and s.method == "kfold":  # one fold of `medlens cv` (train/inner val/held-out as test)
        from medlens.cv import fold_splits

        splits = fold_splits(table, s.folds, s.fold, s.seed, s.val_fraction)
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


def _loss_for(cfg: RunConfig, train: SampleTable):
    known = (~np.isnan(train.targets)).sum(axis=0)
    kw = loss_kwargs(cfg.optim, train.label_space.task, train.positives(), known)
    return create_loss(cfg.optim.loss, train.label_space.task, **kw)


def build_datasets(cfg: RunConfig, table: SampleTable, splits: Splits, meta_encoder=None):
    d = cfg.data
    pp = preprocessing_from_config(d)
    small = len(table) <= 50_000 and d.image_size <= 128
    cache = small if d.cache_images == "auto" else bool(d.cache_images)
    aug = build_augment(d.augment, d.channels, d.color_augment)
    enc = meta_encoder.transform_table if meta_encoder is not None else None
    sets = {}
    for name, rows in splits.as_dict().items():
        sub = table.subset(rows)
        tf = make_transform(pp, aug if name == "train" else None)
        sets[name] = ImageDataset(sub, tf, pp, cache=cache and not table.in_memory, on_bad_image=d.on_bad_image, metadata_encoder=enc)
    return pp, sets, cache


def train(cfg: RunConfig, resume: str | None = None, splits: Splits | None = None, table: SampleTable | None = None, callbacks: list | None = None) -> RunResult:
    """Train a model from a config and write its bundle.

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

    from medlens.engine.distributed import DistributedEpochOrder, env_is_global_zero
    from medlens.engine.module import create_task, optim_settings
    from medlens.engine.tracking import RunRecorder, build_loggers
    from medlens.engine.trainer import build_trainer, monitor_for
    from medlens.models import create_model

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
    run_dir.mkdir(parents=True, exist_ok=True)
    if env_is_global_zero():  # under torchrun/SLURM every process runs this; one writes
        if resume is None and ckpt_dir.exists():
            for f in ckpt_dir.glob("*.ckpt"):  # stale checkpoints of an overwritten run must not be picked up
                f.unlink()
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))

    table, splits = prepare_data(cfg, table, splits)
    space = table.label_space
    if space.task == "anomaly":
        from medlens.engine.anomaly import train_anomaly

        return train_anomaly(cfg, table, splits, run_dir, resume, t0)
    train_table = table.subset(splits.train)
    meta_encoder = None
    if cfg.data.metadata is not None:
        from medlens.data.metadata import MetadataEncoder

        meta_encoder = MetadataEncoder.fit(train_table, cfg.data.metadata)  # statistics from the training split only
    pp, sets, cached = build_datasets(cfg, table, splits, meta_encoder)
    d = cfg.data
    workers = d.num_workers if d.num_workers is not None else default_num_workers(table, cached)
    sampler = weighted_sampler(sets["train"].table, cfg.seed) if d.sampler == "weighted" else None
    train_loader = make_loader(sets["train"], d.batch_size, True, workers, sampler, cfg.seed, drop_last=len(sets["train"]) > d.batch_size)
    val_loader = make_loader(sets["val"], d.eval_batch_size or d.batch_size * 2, False, workers)

    arch = architecture_for(cfg, space.num_outputs, 0 if meta_encoder is None else meta_encoder.dim, None if meta_encoder is None else meta_encoder.architecture())
    model = create_model(arch)
    if cfg.model.checkpoint:
        from medlens.models.classifier import load_backbone_checkpoint

        load_backbone_checkpoint(model, cfg.model.checkpoint)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    metric, mode = monitor_for(cfg, space.task)
    module = create_task(space.task, model=model, label_space=space, loss=_loss_for(cfg, train_table), optim=optim_settings(cfg), monitor_metric=metric, seed=cfg.seed,
                         monitor_mode=mode, channels_last=cfg.trainer.channels_last)
    if cfg.trainer.compile:
        module.model = torch.compile(module.model)
    loggers = build_loggers(cfg, run_dir, resume)
    trainer, ckpt_cb = build_trainer(cfg, run_dir, space.task, loggers, [RunRecorder(cfg, run_dir, resume), DistributedEpochOrder(), *(callbacks or [])])
    t_fit = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
    train_time = time.perf_counter() - t_fit
    if not trainer.is_global_zero:  # DDP: rank 0 alone evaluates (whole val/test sets) and writes the bundle
        return RunResult(run_dir, bundle_dir, {}, list(module.history), None, {}, time.perf_counter() - t0, train_time)

    # ---- best weights (raw or EMA, whichever validated better at the best epoch)
    best = ckpt_cb.best_model_path or str(ckpt_dir / "last.ckpt")
    weights_source = "raw"
    final_model = create_model(arch)
    if best and Path(best).is_file():
        ck = torch.load(best, map_location="cpu", weights_only=False)
        sd = {k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in ck["state_dict"].items() if k.startswith("model.")}
        final_model.load_state_dict(sd)
        epoch = int(ck.get("epoch", 0))
        if cfg.optim.ema and ck.get("medlens_ema_better", {}).get(epoch) and "medlens_ema_state" in ck:
            final_model.load_state_dict(ck["medlens_ema_state"])
            weights_source = "ema"
        history = list(ck.get("medlens_history", module.history))
    else:
        final_model.load_state_dict({k.replace("_orig_mod.", ""): v for k, v in module.model.state_dict().items()})
        history = module.history
    history = module.history if len(module.history) >= len(history) else history
    final_model.eval()

    manifest = Manifest(
        architecture=arch, label_space=space, preprocessing=pp, config=cfg.model_dump(mode="json"),
        weights_source=weights_source, intended_use=cfg.intended_use, history=history,
        metadata_encoder=None if meta_encoder is None else meta_encoder.to_dict(),
    )
    bundle = Bundle(final_model, manifest)

    # ---- calibration and thresholds on validation, through the same Predictor that serves predictions
    val_table = table.subset(splits.val)
    raw = Predictor(bundle, batch_size=128, calibrated=False)
    if cfg.trainer.calibrate and space.task != "anomaly":
        from medlens.calibration import fit_temperature_from_predictor

        manifest.temperature = fit_temperature_from_predictor(raw, val_table)
    predictor = Predictor(bundle, batch_size=128, tta=cfg.trainer.tta)
    val_probs = predictor.predict_table(val_table)
    if space.task in ("binary", "multilabel"):
        if cfg.trainer.threshold_method == "fixed":
            manifest.thresholds = [cfg.trainer.fixed_threshold] * space.num_outputs
        else:
            manifest.thresholds = tune_thresholds(val_probs, val_table.targets, space.task, cfg.trainer.threshold_method)
    results: dict[str, EvalResult] = {"val": score_table(predictor, val_table, "val")}
    if len(splits.test):
        results["test"] = score_table(predictor, table.subset(splits.test), "test")
    metrics = {k: v.metrics for k, v in results.items()}
    metrics["threshold_method"] = cfg.trainer.threshold_method
    metrics["train_time_s"] = round(train_time, 2)
    manifest.metrics = metrics
    summary = {
        **table.summary(), "splits": splits.sizes(), "split_method": splits.method,
        "split_label_counts": {k: table.subset(v).label_counts() for k, v in splits.as_dict().items()},
    }
    save_run_outputs(cfg, run_dir, bundle_dir, final_model, manifest, summary, results, history, loggers)
    wall = time.perf_counter() - t0
    log.info("run %s: bundle at %s (%.1f s)", run_dir, bundle_dir, wall)
    return RunResult(run_dir, bundle_dir, metrics, history, best, summary, wall, train_time)


def save_run_outputs(cfg: RunConfig, run_dir: Path, bundle_dir: Path, model: torch.nn.Module, manifest: Manifest, summary: dict[str, Any],
                     results: dict[str, EvalResult], history: list[dict[str, Any]], loggers: list) -> None:
    """What every finished run writes: the bundle, ``metrics.json``, ``history.csv``, ``predictions.npz``, trackers."""
    from medlens.engine.tracking import finish_tracking

    manifest.extra["data_summary"] = summary
    if (run_dir / "environment.json").is_file():  # the reproducibility record (engine.tracking.RunRecorder)
        manifest.extra["environment"] = json.loads((run_dir / "environment.json").read_text())
    save_bundle(model, manifest, bundle_dir)
    write_json_atomic(run_dir / "metrics.json", manifest.metrics)
    _write_history(run_dir / "history.csv", history)
    with atomic_open(run_dir / "predictions.npz", "wb") as f:
        np.savez_compressed(
            f,
            **{f"{k}_{f}": getattr(v, f) for k, v in results.items() for f in ("probs", "targets")},
            **{f"{k}_ids": np.asarray(v.ids, dtype=str) for k, v in results.items()},
            **{f"{k}_groups": np.asarray(["" if g is None else g for g in v.groups], dtype=str) for k, v in results.items() if v.groups is not None},
        )
    finish_tracking(cfg, loggers, run_dir, manifest.metrics)


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow(row)
