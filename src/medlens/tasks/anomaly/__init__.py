"""Unsupervised anomaly detection: an autoencoder trained on normal images flags what it cannot reconstruct.

``data.task: anomaly`` uses the same config, CLI, pipeline and bundle format as the classifiers. What differs
(all of it in this folder):

* **Data** (:mod:`.data`): the dataset is relabelled normal vs. abnormal; metrics score ``abnormal`` as the
  positive class. Only normal rows of the training split reach the training loader (checked again on every
  batch by :class:`.module.ReconstructionModule`).
* **Loss** (:mod:`.loss`): MSE or MSE + (1 - SSIM). Checkpoints follow ``val/loss`` on the *normal* validation
  images; validation AUROC is logged for information only.
* **Score**: the network reconstructs; :class:`AnomalyScoreHead` turns the reconstruction into one score per
  image (mean or a high percentile of the pixel error map). The same head runs in PyTorch and in ONNX.
* **Operating point** (:mod:`.threshold`): a threshold that flags ``model.anomaly_fpr`` of validation normals.
* **Explanation** (:mod:`.explain`): the pixel error map, method ``error_map``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.tasks.anomaly.data import to_anomaly_table
from medlens.tasks.anomaly.explain import ERROR_MAP
from medlens.tasks.anomaly.metrics import anomaly_metrics
from medlens.tasks.anomaly.threshold import fit_threshold
from medlens.tasks.base import (
    Finding,
    Prediction,
    PredictorLike,
    Presentation,
    Task,
    changed_keys,
    refuse_keys,
)

if TYPE_CHECKING:
    from torch import nn

    from medlens.models.autoencoder import ScoreSpec

log = logging.getLogger("medlens.anomaly")
#: reconstruction losses (``optim.loss``); the registry lives with the torch code in :mod:`.loss`
RECON_LOSS_NAMES = ("mse", "mse_ssim")

ARCHITECTURES = {"unet": "unet_ae", "reversed": "reversed_ae"}

#: classifier keys an autoencoder cannot use (its threshold comes from model.anomaly_fpr, its loss is reconstruction)
CLASSIFIER_KEYS = (
    "model.checkpoint", "model.drop_rate", "model.drop_path_rate",
    "optim.focal_gamma", "optim.focal_alpha", "optim.class_weights", "optim.pos_weight", "optim.label_smoothing",
    "optim.backbone_lr", "optim.freeze_backbone", "optim.freeze_epochs", "data.sampler",
    "trainer.threshold_method", "trainer.fixed_threshold", "trainer.calibrate",
)


#: autoencoder keys a feature detector cannot use, and the feature detector's keys an autoencoder cannot use
AUTOENCODER_KEYS = ("model.autoencoder", "model.ae_depth", "model.ae_width", "model.latent_dim", "model.ae_skip_levels",
                    "model.anomaly_map", "optim.loss")
DETECTOR_KEYS = ("model.memory_size", "model.patch_layers", "model.input_norm")
PATCHCORE = "patchcore"


def architecture_for_anomaly(cfg: Any) -> dict[str, Any]:
    """The manifest's architecture dict of an anomaly config (an autoencoder, or the ``patchcore`` feature detector)."""
    m = cfg.model
    if m.detector == PATCHCORE:
        return {"type": "patchcore", "backbone": m.backbone, "in_chans": cfg.data.channels, "image_size": cfg.data.image_size,
                "small_input": m.small_input, "patch_layers": list(m.patch_layers), "memory_size": m.memory_size,
                "input_norm": m.input_norm}
    arch: dict[str, Any] = {
        "type": ARCHITECTURES[m.autoencoder], "in_chans": cfg.data.channels, "image_size": cfg.data.image_size,
        "depth": m.ae_depth, "width": m.ae_width, "latent_dim": m.latent_dim,
    }
    if m.autoencoder == "unet":
        arch["skip_levels"] = list(m.ae_skip_levels) if m.ae_skip_levels is not None else [m.ae_depth - 1]
    elif m.ae_skip_levels:
        raise ValueError("model.ae_skip_levels: the reversed autoencoder has no skip connections; use autoencoder: unet")
    return arch


def score_spec_for(cfg: Any, pp: Any) -> ScoreSpec:
    """The score settings of a config (with the preprocessing's standardisation, for SSIM on [0, 1] pixels)."""
    from medlens.models.autoencoder import ScoreSpec

    m = cfg.model
    return ScoreSpec(
        error_map="distance" if m.detector == PATCHCORE else m.anomaly_map, method=m.anomaly_score, percentile=m.score_percentile,
        mean=tuple(pp.mean), std=tuple(pp.std), ssim_window=11 if cfg.data.image_size >= 64 else 7,
    )


def normal_rows(table: Any, rows: np.ndarray) -> np.ndarray:
    """The rows (of ``rows``) labelled normal: anomaly target column 0 equal to 1 (unknown rows excluded)."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[table.targets[rows, 0] == 1]


class AnomalyTask(Task):
    """Normal-vs-abnormal detection from normal images only."""

    name = "anomaly"
    kinds = ("anomaly",)
    output_name = "score"
    supports_tta = False
    supports_cv = False
    supports_report = False
    uses_backbone = False
    headline_metric = "auroc"

    def default_monitor(self) -> tuple[str, str]:
        return "loss", "min"

    def uses_pretrained(self, cfg: Any) -> bool:
        return cfg.model.detector == PATCHCORE  # the feature detector's backbone; autoencoders start from scratch

    # ------------------------------------------------------------------ config and data
    def check_config(self, cfg: Any) -> None:
        if cfg.data.metadata is not None:
            raise ValueError("data.metadata: autoencoders use images only; remove the metadata section for task: anomaly")
        if cfg.optim.loss not in ("auto", *RECON_LOSS_NAMES):
            raise ValueError(f"optim.loss {cfg.optim.loss!r} is a classification loss; task: anomaly uses {', '.join(['auto', *RECON_LOSS_NAMES])}")
        refused = [k for k, on in (("optim.ema", cfg.optim.ema), ("optim.mixup_alpha", cfg.optim.mixup_alpha > 0),
                                   ("optim.cutmix_alpha", cfg.optim.cutmix_alpha > 0), ("trainer.tta", cfg.trainer.tta)) if on]
        if refused:
            raise ValueError(f"{', '.join(refused)}: not applicable to task: anomaly (reconstruction training); remove {'them' if len(refused) > 1 else 'it'}")
        if cfg.model.detector == PATCHCORE:
            if not cfg.model.pretrained:
                raise ValueError("model.detector: patchcore describes patches with a pretrained backbone; set model.pretrained "
                                 "(e.g. the backbone.safetensors of `medlens pretrain CONFIG`): random features are not a detector")
            if cfg.trainer.max_epochs != 1:
                raise ValueError("trainer.max_epochs: patchcore fills its memory in one pass over the training normals; set it to 1")
            refuse_keys(changed_keys(cfg, AUTOENCODER_KEYS), "autoencoder options do not act for model.detector: patchcore")
        else:
            if cfg.model.pretrained:
                raise ValueError("model.pretrained: autoencoders are trained from scratch; remove it for task: anomaly "
                                 "(or use model.detector: patchcore)")
            refuse_keys(changed_keys(cfg, DETECTOR_KEYS), "feature-detector options act only with model.detector: patchcore")
        if cfg.model.ae_skip_levels and cfg.model.autoencoder != "unet":
            raise ValueError("model.ae_skip_levels: the reversed autoencoder has no skip connections; use autoencoder: unet")
        refuse_keys(changed_keys(cfg, CLASSIFIER_KEYS), "classifier options do not act for task: anomaly (an autoencoder whose "
                    "threshold flags model.anomaly_fpr of validation normals)")

    @classmethod
    def read(cls, data_cfg: Any):
        """Read the source's own labels, then relabel normal vs abnormal."""
        from medlens.data.readers import read_dataset

        return to_anomaly_table(read_dataset(data_cfg.model_copy(update={"task": None})), data_cfg.normal_label)

    def prepare_table(self, table: Any, data_cfg: Any) -> Any:
        space = table.label_space
        if space.task != "anomaly" or space.num_labels != 2:
            raise ValueError(f"{table.source}: anomaly training needs the normal-vs-abnormal view (data.task: anomaly), got task {space.task!r}")
        if data_cfg.normal_label and space.names[0] != data_cfg.normal_label:
            raise ValueError(f"{table.source}: the normal class is {space.names[0]!r} but data.normal_label is {data_cfg.normal_label!r}")
        return table

    def training_rows(self, table: Any, rows: np.ndarray) -> np.ndarray:
        space = table.label_space
        normals = normal_rows(table, rows)
        if len(normals) == 0:
            raise ValueError(f"{table.source}: the training split has no {space.names[0]!r} images to learn from")
        if not np.all(table.targets[normals, 0] == 1):  # the invariant the whole method rests on
            raise RuntimeError("anomaly training table contains non-normal rows")
        log.info("anomaly: training on %d %r images (%d other training rows left out)", len(normals), space.names[0], len(rows) - len(normals))
        return normals

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: Any, space: Any, meta_encoder: Any = None) -> dict[str, Any]:
        return architecture_for_anomaly(cfg)

    def create_loss(self, cfg: Any, train_table: Any, preprocessing: Any) -> nn.Module:
        from medlens.tasks.anomaly.loss import create_reconstruction_loss

        return create_reconstruction_loss(cfg.optim.loss, spec=score_spec_for(cfg, preprocessing))

    def create_module(self, cfg: Any, model: nn.Module, space: Any, loss: nn.Module, preprocessing: Any, monitor: tuple[str, str]) -> Any:
        from medlens.engine.module import optim_settings
        from medlens.tasks.anomaly.module import ReconstructionModule

        if cfg.model.detector == PATCHCORE:
            from medlens.tasks.anomaly.patchcore import PatchCoreModule

            return PatchCoreModule(model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0],
                                   seed=cfg.seed, score=score_spec_for(cfg, preprocessing))
        return ReconstructionModule(model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0],
                                    seed=cfg.seed, score=score_spec_for(cfg, preprocessing))

    def manifest_section(self, cfg: Any, preprocessing: Any, space: Any) -> dict[str, Any]:
        return {"normal_label": space.names[0], "abnormal_label": space.names[1], **score_spec_for(cfg, preprocessing).to_dict()}

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Any) -> nn.Module:
        from medlens.models.autoencoder import ScoreSpec
        from medlens.tasks.anomaly.head import AnomalyScoreHead

        return AnomalyScoreHead(model, ScoreSpec.from_dict(manifest.anomaly))

    def num_outputs(self, manifest: Any) -> int:
        return 1

    def activation(self, raw: np.ndarray, manifest: Any, calibrated: bool = True) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32)  # the score is final: compared with the fitted threshold

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: Any, manifest: Any, raw_val: np.ndarray, val_table: Any, predictor: PredictorLike) -> dict[str, Any]:
        """Threshold flagging ``model.anomaly_fpr`` of validation normals; error-map colour scale from them."""
        normal = val_table.targets[:, 0] == 1
        if not normal.any():
            raise ValueError(f"{val_table.source}: the validation split has no {manifest.label_names[0]!r} images to fit the threshold on")
        thr, got_fpr = fit_threshold(raw_val[normal, 0], cfg.model.anomaly_fpr)
        from medlens.tasks.anomaly.explain import pixel_error_reference

        pixel_scale = pixel_error_reference(predictor, val_table.subset(np.flatnonzero(normal)))
        manifest.thresholds = [thr]
        manifest.anomaly = {**(manifest.anomaly or {}),
                            "threshold": thr, "fpr": cfg.model.anomaly_fpr, "val_normal_fpr": got_fpr, "n_val_normals": int(normal.sum()),
                            "threshold_method": "fpr_on_val_normals", "pixel_scale": pixel_scale}
        log.info("anomaly threshold %.6g: flags %.2f%% of %d validation normals (target %.2f%%)", thr, 100 * got_fpr, int(normal.sum()), 100 * cfg.model.anomaly_fpr)
        return {"threshold_method": "fpr_on_val_normals"}

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Any, groups: Sequence | None = None) -> dict[str, Any]:
        return anomaly_metrics(scores, targets, manifest, groups=groups)

    # ------------------------------------------------------------------ decisions and presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Any) -> list[Prediction]:
        names = manifest.label_names
        th = manifest.thresholds
        thr = float(th[0]) if th else float("inf")
        out = []
        for p, src in zip(scores, sources, strict=True):
            score = float(p[0])
            flagged = score >= thr  # abnormal when the score reaches the fitted threshold
            out.append(Prediction(src, {}, {names[1]: flagged}, {names[1]: thr}, [names[1] if flagged else names[0]], score=score))
        return out

    def findings(self, prediction: Prediction, manifest: Any) -> list[Finding]:
        lab = manifest.label_names[1]
        return [Finding(lab, prediction.score, "score", prediction.thresholds.get(lab), "threshold", lab in prediction.predicted)]

    def presentation(self, manifest: Any) -> Presentation:
        names = manifest.label_names
        return Presentation(
            value_name="Anomaly score", value_kind="score", explain_labels=[names[1]], explain_methods=[ERROR_MAP],
            summary=f"The model outputs an anomaly score (reconstruction error); at or above the threshold the image is "
                    f"flagged {names[1]!r}, below it {names[0]!r}. The score is not a probability.",
        )

    # ------------------------------------------------------------------ explanations
    def explain_methods(self) -> list[str]:
        return [ERROR_MAP]

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Any]:
        self.check_method(method)
        names = predictor.manifest.label_names
        for lab in labels or []:
            if lab not in names:
                raise ValueError(f"unknown label {lab!r}; this model's labels: {', '.join(names)}")
        from medlens.tasks.anomaly.explain import error_map_explanation

        return [error_map_explanation(predictor, image)]

    def caption(self, method: str) -> str:
        return ("Warm colours mark the pixels the autoencoder reconstructed worst; full colour is the 99.5th percentile "
                "of pixel errors on the validation normals, so the colours mean the same on every image.")

    def target_layers(self, model: nn.Module) -> list[str]:
        return []
