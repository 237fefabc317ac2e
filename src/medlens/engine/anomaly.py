"""Unsupervised anomaly detection: an autoencoder trained on normal images flags what it cannot reconstruct.

``task: anomaly`` uses the same config, CLI (``medlens train/evaluate/predict/explain``) and bundle format as the
classifiers. What differs:

* **Data**: the dataset is relabelled normal vs. abnormal (:mod:`medlens.data.anomaly`); the label space is
  ``(normal_label, abnormal)`` and metrics score ``abnormal`` as the positive class.
* **Training** (:func:`train_anomaly`): only rows of the training split whose label is the normal class reach
  the training loader (enforced again on every batch by :class:`ReconstructionTask`). The loss is MSE or
  MSE + (1 - SSIM) (``optim.loss: mse | mse_ssim``). Checkpoints and early stopping follow ``val/loss``, the
  reconstruction loss on the *normal* validation images; validation AUROC is logged for information only.
* **Score**: the bundle's network outputs a reconstruction; :class:`medlens.predict.Predictor` turns it into one
  column, the anomaly score (the mean, or a high percentile, of the pixel error map -- squared error or SSIM
  dissimilarity; see :class:`medlens.models.autoencoder.ScoreSpec`).
* **Threshold**: fitted on the validation normals so that a chosen fraction ``model.anomaly_fpr`` of them is
  flagged (:func:`fit_threshold`); saved as ``manifest.thresholds[0]`` and in ``manifest.anomaly``.
* **Metrics** (:func:`anomaly_metrics`): AUROC, average precision and F1/sensitivity/specificity at the
  threshold from :mod:`medlens.metrics`, with bootstrap CIs from :mod:`medlens.uncertainty`.
* **Explanation** (:func:`error_map_explanation`): the pixel error map over the image, for ``explain``/``serve``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medlens.data.dataset import Batch
from medlens.data.labels import LabelSpace
from medlens.engine.module import TASKS, OptimSettings, TaskModule
from medlens.metrics import classification_metrics
from medlens.models.autoencoder import ScoreSpec, error_map, scores_from_error_maps, ssim_map
from medlens.registry import Registry

if TYPE_CHECKING:
    from medlens.bundle import Manifest
    from medlens.config import RunConfig
    from medlens.data.samples import SampleTable
    from medlens.data.splits import Splits
    from medlens.data.transforms import Preprocessing
    from medlens.predict import ImageInput, Predictor
    from medlens.training import RunResult

log = logging.getLogger("medlens.anomaly")

RECON_LOSSES: Registry = Registry("reconstruction loss")
ARCHITECTURES = {"unet": "unet_ae", "reversed": "reversed_ae"}
#: headline metrics that get a bootstrap CI
CI_METRICS = ("auroc_macro", "average_precision_macro", "f1_macro", "sensitivity_macro", "specificity_macro")
DEFAULT_N_BOOT = 1000


# ------------------------------------------------------------------------------------------ losses
class ReconstructionLoss(nn.Module):
    """Mean squared error, optionally plus ``ssim_weight * (1 - SSIM)``, per image and averaged.

    Args:
        ssim_weight: weight of the SSIM term (0: plain MSE).
        spec: the standardisation (SSIM is computed on [0, 1] pixels) and the SSIM window.

    Example:
        >>> loss = ReconstructionLoss(ssim_weight=1.0)
        >>> float(loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)))
        0.0
    """

    def __init__(self, ssim_weight: float = 0.0, spec: ScoreSpec | None = None) -> None:
        super().__init__()
        self.ssim_weight = float(ssim_weight)
        self.spec = spec or ScoreSpec()

    def per_sample(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Loss per image, (B,)."""
        loss = (recon.float() - x.float()).pow(2).flatten(1).mean(dim=1)
        if self.ssim_weight > 0:
            sp = self.spec
            s = ssim_map(sp.to_pixels(recon), sp.to_pixels(x), 1.0, sp.ssim_window).flatten(1).mean(dim=1)
            loss = loss + self.ssim_weight * (1.0 - s)
        return loss

    def forward(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.per_sample(recon, x).mean()


@RECON_LOSSES.register("mse")
def _mse(**kw: Any) -> ReconstructionLoss:
    return ReconstructionLoss(0.0, **kw)


@RECON_LOSSES.register("mse_ssim")
def _mse_ssim(**kw: Any) -> ReconstructionLoss:
    return ReconstructionLoss(1.0, **kw)


def create_reconstruction_loss(name: str, **kw: Any) -> ReconstructionLoss:
    """``mse`` or ``mse_ssim`` (``auto`` means ``mse``); any other name is an error listing the valid ones.

    Example:
        >>> create_reconstruction_loss("mse_ssim").ssim_weight
        1.0
    """
    return RECON_LOSSES.create("mse" if name == "auto" else name, **kw)


# ------------------------------------------------------------------------------------------ threshold
def fit_threshold(normal_scores: np.ndarray, fpr: float) -> tuple[float, float]:
    """Threshold that flags at most a fraction ``fpr`` of the given normal scores (``score >= threshold``).

    With ``n`` normals, ``floor(fpr * n)`` of them end up at or above the threshold (fewer only when scores
    tie); the threshold lies midway between the last flagged and the first unflagged score.

    Returns:
        (threshold, the false-positive rate it gives on these scores).

    Example:
        >>> fit_threshold(np.arange(100.0), 0.05)
        (94.5, 0.05)
    """
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())[::-1]
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("no normal validation scores to fit the anomaly threshold on")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-positive rate must be in (0, 1), got {fpr}")
    k = int(np.floor(fpr * len(s) + 1e-9))  # how many normals may be flagged
    if k == 0:
        # a margin above the largest score: batched and single-image passes differ by float rounding
        thr = float(s[0] + 1e-6 * max(1.0, abs(s[0])))
    else:
        hi, lo = s[k - 1], s[k]
        mid = (hi + lo) / 2.0
        thr = float(mid) if lo < mid <= hi else float(np.nextafter(hi, np.inf))  # ties: flag fewer, not more
    return thr, float(np.mean(s >= thr))


# ------------------------------------------------------------------------------------------ task module
@TASKS.register("anomaly")
class ReconstructionTask(TaskModule):
    """Reconstruction training on normal images; validation reports the normal-image loss and the score's AUROC.

    Args:
        model: an autoencoder (``forward(x) -> reconstruction``).
        label_space: ``(normal, abnormal)``, task ``anomaly``.
        loss: a :class:`ReconstructionLoss`.
        optim: optimiser settings (EMA and mixup/cutmix do not apply and are switched off).
        monitor_metric: the validation metric checkpoints follow (``loss``).
        seed: per-epoch seeding.
        score: how validation images are scored (for the logged AUROC).
    """

    task = "anomaly"

    def __init__(
        self, model: nn.Module, label_space: LabelSpace, loss: nn.Module, optim: OptimSettings,
        monitor_metric: str = "loss", seed: int = 0, score: ScoreSpec | None = None,
    ) -> None:
        if optim.ema or optim.mixup_alpha > 0 or optim.cutmix_alpha > 0:
            log.warning("anomaly task: EMA, mixup and cutmix do not apply to reconstruction training; ignored")
            optim = dataclasses.replace(optim, ema=False, mixup_alpha=0.0, cutmix_alpha=0.0)
        super().__init__(model, label_space, loss, optim, monitor_metric, seed)
        self.score_spec = score or ScoreSpec()
        self.train_rows_seen = 0  # images that went through training_step (all of them normal)

    def forward(self, images: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(images)

    @staticmethod
    def check_normal(batch: Batch) -> None:
        """Raise if any row of a training batch is not labelled normal (column 0 of the anomaly targets)."""
        normal = batch.targets[:, 0] == 1
        if not bool(normal.all()):
            bad = batch.index[~normal].tolist()
            raise RuntimeError(f"anomaly training: {len(bad)} non-normal samples reached the training loader (rows {bad[:5]})")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None
        self.check_normal(batch)
        self.train_rows_seen += len(batch)
        loss = self.loss_fn(self.model(batch.images), batch.images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": [], "scores": [], "targets": []}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch is None:
            return
        x = batch.images
        recon = self.model(x)
        self._val["loss"].append(self.loss_fn.per_sample(recon, x).detach())
        self._val["scores"].append(scores_from_error_maps(error_map(x, recon, self.score_spec), self.score_spec).detach())
        self._val["targets"].append(batch.targets.detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("loss"):
            return
        loss = self._gather(self._val["loss"])
        scores = self._gather(self._val["scores"])
        targets = self._gather(self._val["targets"])
        normal = targets[:, 0] == 1
        logs = {"val/loss": float(loss[normal].mean()) if normal.any() else float(loss.mean()), "val/loss_all": float(loss.mean())}
        if normal.any() and (targets[:, 1] == 1).any():  # information only: model selection never sees abnormal images
            m = classification_metrics(scores[:, None], targets, "anomaly", self.label_space.names, calibration=False, warn=False)
            for k in ("auroc_macro", "average_precision_macro"):
                if m.get(k) is not None:
                    logs[f"val/{k.removesuffix('_macro')}"] = float(m[k])
        self.log_dict(logs, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            row = {"epoch": int(self.current_epoch), "step": int(self.global_step), **logs}
            tl = self.trainer.callback_metrics.get("train/loss_epoch")
            if tl is not None:
                row["train/loss"] = float(tl)
            self.history.append(row)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        maps = error_map(batch.images, self.model(batch.images), self.score_spec)
        return {"probs": scores_from_error_maps(maps, self.score_spec)[:, None], "index": batch.index}

    def configure_optimizers(self):
        out = super().configure_optimizers()
        if self.optim.scheduler == "plateau":  # the reconstruction loss goes down: plateau on a minimum
            opt = out["optimizer"]
            o = self.optim
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=o.gamma if o.gamma < 1 else 0.1, patience=o.plateau_patience)
            out = {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        return out


# ------------------------------------------------------------------------------------------ metrics
def anomaly_metrics(
    probs: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Any = None, n_boot: int | None = DEFAULT_N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """Metrics of anomaly scores at the bundle's threshold, with bootstrap CIs.

    Args:
        probs: (N, 1) anomaly scores (what :class:`medlens.predict.Predictor` returns for anomaly bundles).
        targets: (N, 2) anomaly targets (normal, abnormal), NaN unknown.
        manifest: the bundle's manifest (label names, threshold, score settings).
        groups: patient ids for a cluster bootstrap, or None.
        n_boot: bootstrap replicates (0 or None: no CIs).
        seed: bootstrap seed.

    Returns:
        :func:`medlens.metrics.classification_metrics` output for task ``anomaly`` (``auroc_macro``,
        ``average_precision_macro``, ``f1_macro``, ... with ``abnormal`` the positive label) plus the short names
        ``auroc``, ``average_precision``, ``f1``, ``sensitivity``, ``specificity``, ``fpr`` (at the threshold),
        ``threshold``, ``fpr_target``, ``score_method`` and ``ci`` (:func:`medlens.uncertainty.bootstrap_ci`).

    Example:
        >>> m = anomaly_metrics(scores, targets, bundle.manifest)  # doctest: +SKIP
        >>> m["auroc"], m["ci"]["headline"]["auroc_macro"]["low"]  # doctest: +SKIP
    """
    a = manifest.anomaly or {}
    thr = list(manifest.thresholds) or ([a["threshold"]] if a.get("threshold") is not None else None)
    names = manifest.label_names
    m = classification_metrics(probs, targets, "anomaly", names, thr, calibration=False)
    spec = m.get("specificity_macro")
    m.update({
        "auroc": m.get("auroc_macro"), "average_precision": m.get("average_precision_macro"), "f1": m.get("f1_macro"),
        "sensitivity": m.get("sensitivity_macro"), "specificity": spec, "fpr": None if spec is None else 1.0 - spec,
        "threshold": None if not thr else float(thr[0]), "fpr_target": a.get("fpr"),
        "score_method": f"{a.get('error_map', 'mse')}/{a.get('method', 'mean')}",
    })
    if n_boot:
        try:
            from medlens.uncertainty import bootstrap_ci
        except ImportError:  # pragma: no cover - uncertainty ships with medlens
            bootstrap_ci = None
        if bootstrap_ci is not None and len(probs):
            m["ci"] = bootstrap_ci(probs, targets, "anomaly", names, thr, groups=groups, n_boot=n_boot, seed=seed, metrics=CI_METRICS, label_metrics=())
    return m


# ------------------------------------------------------------------------------------------ explanation
def error_map_explanation(predictor: Predictor, image: ImageInput, label: str | None = None, metadata: dict | None = None):
    """The pixel error map of one image as a :class:`medlens.explain.Explanation` (heatmap at the image's size).

    The map is the bundle's error map (squared error or SSIM dissimilarity) resized to the decoded image and
    divided by ``manifest.anomaly["pixel_scale"]`` (the 99.5th percentile of pixel errors on validation
    normals), so colours mean the same on every image. ``probability`` carries the anomaly score.

    Args:
        predictor: a torch :class:`~medlens.predict.Predictor` of an anomaly bundle.
        image: a path, bytes, numpy array or PIL image.
        label: ignored (an anomaly model has one output); accepted for the explain hook's signature.
        metadata: ignored.

    Example:
        >>> e = error_map_explanation(Predictor.from_bundle("runs/ae/bundle"), "chest.png")  # doctest: +SKIP
        >>> e.heatmap.shape == load_image("chest.png").shape[:2]  # doctest: +SKIP
        True
    """
    from medlens.explain import explanation_from_map
    from medlens.predict import decode_input

    m = predictor.manifest
    if m.task != "anomaly":
        raise ValueError(f"error maps explain anomaly bundles; this bundle's task is {m.task!r}")
    img, _src = decode_input(image)
    emap, score = error_map_array(predictor, img)
    # Fixed scale from the validation normals (their 99.5th-percentile pixel error = full colour), so a
    # well-reconstructed image stays dark instead of being stretched; old bundles fall back to the map's max.
    scale = float((m.anomaly or {}).get("pixel_scale") or 0.0) or float(emap.max())
    heat = np.clip(emap / scale, 0.0, 1.0) if scale > 0 else emap
    return explanation_from_map(img, heat, m.label_names[1], "error_map", float(score), target_layer="", normalize=False)


def error_map_array(predictor: Predictor, image: np.ndarray) -> tuple[np.ndarray, float]:
    """(error map resized to the decoded image's (H, W), anomaly score) for one decoded uint8 image.

    Example:
        >>> emap, score = error_map_array(predictor, load_image("chest.png"))  # doctest: +SKIP
    """
    import cv2

    m = predictor.manifest
    spec = ScoreSpec.from_dict(m.anomaly)
    x = torch.from_numpy(predictor.transform(image))[None].to(predictor.device)
    model = predictor.model
    with torch.inference_mode():
        maps = error_map(x, model(x), spec)
        score = float(scores_from_error_maps(maps, spec)[0])
    emap = maps[0, 0].float().cpu().numpy()
    h, w = image.shape[:2]
    if emap.shape != (h, w):
        emap = cv2.resize(emap, (w, h), interpolation=cv2.INTER_LINEAR)
    return emap.astype(np.float32), score


def pixel_error_reference(predictor: Predictor, normals: SampleTable, q: float = 99.5) -> float:
    """The ``q``-th percentile of pixel errors over a table of normal images (the error-map colour scale)."""
    from medlens.data.io import load_image

    spec = ScoreSpec.from_dict(predictor.manifest.anomaly)
    vals = []
    for i in range(0, len(normals), predictor.batch_size):
        idx = range(i, min(i + predictor.batch_size, len(normals)))
        imgs = [normals.images[j] if normals.in_memory else load_image(normals.images[j]) for j in idx]
        x = torch.from_numpy(np.stack([predictor.transform(im) for im in imgs])).to(predictor.device)
        with torch.inference_mode():
            vals.append(error_map(x, predictor.model(x), spec).flatten().float().cpu().numpy())
    return float(np.percentile(np.concatenate(vals), q)) if vals else 0.0


# ------------------------------------------------------------------------------------------ training
def architecture_for_anomaly(cfg: RunConfig) -> dict[str, Any]:
    """The manifest's architecture dict of an autoencoder config."""
    m = cfg.model
    arch: dict[str, Any] = {
        "type": ARCHITECTURES[m.autoencoder], "in_chans": cfg.data.channels, "image_size": cfg.data.image_size,
        "depth": m.ae_depth, "width": m.ae_width, "latent_dim": m.latent_dim,
    }
    if m.autoencoder == "unet":
        arch["skip_levels"] = list(m.ae_skip_levels) if m.ae_skip_levels is not None else [m.ae_depth - 1]
    elif m.ae_skip_levels:
        raise ValueError("model.ae_skip_levels: the reversed autoencoder has no skip connections; use autoencoder: unet")
    return arch


def score_spec_for(cfg: RunConfig, pp: Preprocessing) -> ScoreSpec:
    """The score settings of a config (with the preprocessing's standardisation, for SSIM on [0, 1] pixels)."""
    m = cfg.model
    return ScoreSpec(
        error_map=m.anomaly_map, method=m.anomaly_score, percentile=m.score_percentile,
        mean=tuple(pp.mean), std=tuple(pp.std), ssim_window=11 if cfg.data.image_size >= 64 else 7,
    )


def normal_rows(table: SampleTable, rows: np.ndarray) -> np.ndarray:
    """The rows (of ``rows``) labelled normal: anomaly target column 0 equal to 1 (unknown rows excluded)."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[table.targets[rows, 0] == 1]


def _check_table(cfg: RunConfig, table: SampleTable) -> None:
    space = table.label_space
    if space.task != "anomaly" or space.num_labels != 2:
        raise ValueError(f"{table.source}: anomaly training needs the normal-vs-abnormal view (data.task: anomaly), got task {space.task!r}")
    if cfg.data.normal_label and space.names[0] != cfg.data.normal_label:
        raise ValueError(f"{table.source}: the normal class is {space.names[0]!r} but data.normal_label is {cfg.data.normal_label!r}")
    if cfg.data.metadata is not None:
        raise ValueError("data.metadata: autoencoders use images only; remove the metadata section for task: anomaly")
    if cfg.optim.loss not in ("auto", *RECON_LOSSES.names()):
        raise ValueError(f"optim.loss {cfg.optim.loss!r} is a classification loss; task: anomaly uses {', '.join(['auto', *RECON_LOSSES.names()])}")


def train_anomaly(cfg: RunConfig, table: SampleTable, splits: Splits, run_dir: Path, resume: str | None = None, t0: float | None = None) -> RunResult:
    """Train an autoencoder on the normal images of the training split, fit the threshold, evaluate, write the bundle.

    Called by :func:`medlens.train` for ``data.task: anomaly``; the run folder has the same layout.

    Args:
        cfg: the run config.
        table: the anomaly view of the dataset (:func:`medlens.data.anomaly.to_anomaly_table`).
        splits: train/val/test rows (all labels; abnormal training rows are dropped here).
        run_dir: the run folder (``config.yaml`` already written).
        resume: a Lightning checkpoint to continue from.
        t0: ``time.perf_counter()`` at the start of the run (for the wall time).

    Example:
        >>> result = medlens.train(load_config("configs/anomaly_pneumoniamnist.yaml"))  # doctest: +SKIP
        >>> result.metrics["test"]["auroc"]  # doctest: +SKIP
    """
    from medlens.bundle import Bundle, Manifest
    from medlens.data.dataset import ImageDataset, default_num_workers, make_loader
    from medlens.data.transforms import build_augment, make_transform, preprocessing_from_config
    from medlens.engine.module import create_task, optim_settings
    from medlens.engine.tracking import RunRecorder, build_loggers
    from medlens.engine.trainer import build_trainer
    from medlens.evaluate import EvalResult, score_table
    from medlens.models import create_model
    from medlens.predict import Predictor
    from medlens.training import RunResult, save_run_outputs

    t0 = time.perf_counter() if t0 is None else t0
    _check_table(cfg, table)
    space = table.label_space
    d = cfg.data
    run_dir = Path(run_dir)
    bundle_dir = run_dir / "bundle"

    # ---- data: normal training images only
    train_rows = normal_rows(table, splits.train)
    dropped = len(splits.train) - len(train_rows)
    if len(train_rows) == 0:
        raise ValueError(f"{table.source}: the training split has no {space.names[0]!r} images to learn from")
    val_normal = normal_rows(table, splits.val)
    if len(val_normal) == 0:
        raise ValueError(f"{table.source}: the validation split has no {space.names[0]!r} images to fit the threshold on")
    train_table = table.subset(train_rows)
    if not np.all(train_table.targets[:, 0] == 1):  # the invariant the whole method rests on
        raise RuntimeError("anomaly training table contains non-normal rows")
    log.info("anomaly: training on %d %r images (%d other training rows left out); %d validation normals",
             len(train_rows), space.names[0], dropped, len(val_normal))
    pp = preprocessing_from_config(d)
    spec = score_spec_for(cfg, pp)
    small = len(table) <= 50_000 and d.image_size <= 128
    cache = (small if d.cache_images == "auto" else bool(d.cache_images)) and not table.in_memory
    aug = build_augment(d.augment, d.channels, d.color_augment)
    train_set = ImageDataset(train_table, make_transform(pp, aug), pp, cache=cache, on_bad_image=d.on_bad_image)
    val_set = ImageDataset(table.subset(splits.val), make_transform(pp), pp, cache=cache, on_bad_image=d.on_bad_image)
    workers = d.num_workers if d.num_workers is not None else default_num_workers(table, cache)
    train_loader = make_loader(train_set, d.batch_size, True, workers, None, cfg.seed, drop_last=len(train_set) > d.batch_size)
    val_loader = make_loader(val_set, d.eval_batch_size or d.batch_size * 2, False, workers)

    # ---- model and training
    arch = architecture_for_anomaly(cfg)
    model = create_model(arch)
    loss = create_reconstruction_loss(cfg.optim.loss, spec=spec)
    module = create_task("anomaly", model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric="loss", seed=cfg.seed, score=spec)
    loggers = build_loggers(cfg, run_dir, resume)
    trainer, ckpt_cb = build_trainer(cfg, run_dir, "anomaly", loggers, [RunRecorder(cfg, run_dir, resume)])
    t_fit = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
    train_time = time.perf_counter() - t_fit
    if not trainer.is_global_zero:
        return RunResult(run_dir, bundle_dir, {}, list(module.history), None, {}, time.perf_counter() - t0, train_time)

    best = ckpt_cb.best_model_path or str(run_dir / "checkpoints" / "last.ckpt")
    final_model = create_model(arch)
    history = list(module.history)
    if best and Path(best).is_file():
        ck = torch.load(best, map_location="cpu", weights_only=False)  # our own checkpoint (trusted)
        final_model.load_state_dict({k.removeprefix("model."): v for k, v in ck["state_dict"].items() if k.startswith("model.")})
        saved = list(ck.get("medlens_history", []))
        history = history if len(history) >= len(saved) else saved
    else:
        final_model.load_state_dict(module.model.state_dict())
    final_model.eval()

    # ---- threshold on validation normals, through the same Predictor that serves predictions
    manifest = Manifest(
        architecture=arch, label_space=space, preprocessing=pp, config=cfg.model_dump(mode="json"),
        intended_use=cfg.intended_use, history=history, anomaly={"normal_label": space.names[0], "abnormal_label": space.names[1], **spec.to_dict()},
    )
    bundle = Bundle(final_model, manifest)
    predictor = Predictor(bundle, batch_size=128)
    val_normal_scores = predictor.predict_table(table.subset(val_normal))[:, 0]
    thr, got_fpr = fit_threshold(val_normal_scores, cfg.model.anomaly_fpr)
    pixel_scale = pixel_error_reference(predictor, table.subset(val_normal))
    manifest.thresholds = [thr]
    manifest.anomaly.update({
        "threshold": thr, "fpr": cfg.model.anomaly_fpr, "val_normal_fpr": got_fpr, "n_val_normals": int(len(val_normal)),
        "threshold_method": "fpr_on_val_normals", "train_normals": int(len(train_rows)), "pixel_scale": pixel_scale,
    })
    log.info("anomaly threshold %.6g: flags %.2f%% of %d validation normals (target %.2f%%)", thr, 100 * got_fpr, len(val_normal), 100 * cfg.model.anomaly_fpr)

    results: dict[str, EvalResult] = {"val": score_table(predictor, table.subset(splits.val), "val")}
    if len(splits.test):
        results["test"] = score_table(predictor, table.subset(splits.test), "test")
    metrics: dict[str, Any] = {k: v.metrics for k, v in results.items()}
    metrics["threshold_method"] = "fpr_on_val_normals"
    metrics["train_time_s"] = round(train_time, 2)
    manifest.metrics = metrics
    summary = {
        **table.summary(), "splits": splits.sizes(), "split_method": splits.method, "train_normals": int(len(train_rows)),
        "train_rows_left_out": int(dropped),
        "split_label_counts": {k: table.subset(v).label_counts() for k, v in splits.as_dict().items()},
    }
    save_run_outputs(cfg, run_dir, bundle_dir, final_model, manifest, summary, results, history, loggers)
    wall = time.perf_counter() - t0
    log.info("anomaly run %s: bundle at %s (%.1f s)", run_dir, bundle_dir, wall)
    return RunResult(run_dir, bundle_dir, metrics, history, best, summary, wall, train_time)
