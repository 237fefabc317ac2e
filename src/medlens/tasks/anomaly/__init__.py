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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.data.labels import Layout, register_layout
from medlens.tasks.anomaly.data import to_anomaly_table
from medlens.tasks.anomaly.explain import ERROR_MAP
from medlens.tasks.anomaly.metrics import anomaly_metrics
from medlens.tasks.anomaly.options import AnomalyOptions
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
from medlens.tasks.registry import register_task

if TYPE_CHECKING:
    from torch import nn

    from medlens.bundle import Manifest
    from medlens.config import RunConfig
    from medlens.data.labels import LabelSpace
    from medlens.data.metadata import MetadataEncoder
    from medlens.data.samples import SampleTable
    from medlens.data.transforms import Preprocessing
    from medlens.explanation import Explanation
    from medlens.models.autoencoder import ScoreSpec

log = logging.getLogger("medlens.anomaly")

#: the normal-vs-abnormal view: two names (normal, abnormal), one output (the anomaly score)
KIND = "anomaly"
register_layout(KIND, Layout(exclusive=True, single_output=True))

ARCHITECTURES = {"unet": "unet_ae", "reversed": "reversed_ae"}

#: autoencoder options a feature detector cannot use, and the feature detector's options an autoencoder cannot use
AUTOENCODER_KEYS = ("autoencoder", "ae_depth", "ae_width", "latent_dim", "ae_skip_levels", "anomaly_map", "loss")
DETECTOR_KEYS = ("memory_size", "patch_layers", "input_norm", "coreset_candidates", "patch_position", "random_features")
PATCHCORE = "patchcore"


@dataclass
class AnomalyPrediction(Prediction):
    """A detector's result for one image.

    Attributes:
        score: the anomaly score (higher: less like the training normals).
        threshold: the score threshold of the bundle.
        flagged: score >= threshold.
        label: the label decided (the abnormal name when flagged, else the normal name).
    """

    score: float | None = None
    threshold: float | None = None
    flagged: bool = False
    label: str = ""


def architecture_for_anomaly(cfg: RunConfig, opts: AnomalyOptions | None = None) -> dict[str, Any]:
    """The manifest's architecture dict of an anomaly config (an autoencoder, or the ``patchcore`` feature detector)."""
    opts = AnomalyTask.parse_options(cfg) if opts is None else opts  # type: ignore[assignment]
    if opts.detector == PATCHCORE:
        return {"type": "patchcore", "backbone": cfg.model.backbone, "in_chans": cfg.data.channels, "image_size": cfg.data.image_size,
                "small_input": cfg.model.small_input, "patch_layers": list(opts.patch_layers), "memory_size": opts.memory_size,
                "input_norm": opts.input_norm, **({"patch_position": opts.patch_position} if opts.patch_position > 0 else {})}
    arch: dict[str, Any] = {
        "type": ARCHITECTURES[opts.autoencoder], "in_chans": cfg.data.channels, "image_size": cfg.data.image_size,
        "depth": opts.ae_depth, "width": opts.ae_width, "latent_dim": opts.latent_dim,
    }
    if opts.autoencoder == "unet":
        arch["skip_levels"] = list(opts.ae_skip_levels) if opts.ae_skip_levels is not None else [opts.ae_depth - 1]
    elif opts.ae_skip_levels:
        raise ValueError("task_options.ae_skip_levels: the reversed autoencoder has no skip connections; use autoencoder: unet")
    return arch


def score_spec_for(cfg: RunConfig, opts: AnomalyOptions, pp: Preprocessing) -> ScoreSpec:
    """The score settings of a config (with the preprocessing's standardisation, for SSIM on [0, 1] pixels)."""
    from medlens.models.autoencoder import ScoreSpec

    return ScoreSpec(
        error_map="distance" if opts.detector == PATCHCORE else opts.anomaly_map, method=opts.anomaly_score,
        percentile=opts.score_percentile, mean=tuple(pp.mean), std=tuple(pp.std), ssim_window=11 if cfg.data.image_size >= 64 else 7,
    )


def normal_rows(table: SampleTable, rows: np.ndarray) -> np.ndarray:
    """The rows (of ``rows``) labelled normal: anomaly target column 0 equal to 1 (unknown rows excluded)."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows[table.targets[rows, 0] == 1]


def section(manifest: Manifest) -> dict[str, Any]:
    """The anomaly task's manifest section (score settings, threshold record, error-map scale)."""
    return dict(manifest.task_section or {})


@register_task
class AnomalyTask(Task):
    """Normal-vs-abnormal detection from normal images only."""

    name = "anomaly"
    kinds = (KIND,)
    options_model = AnomalyOptions
    output_name = "score"
    headline_metric = "auroc"
    supports_thresholds = True

    def default_monitor(self) -> tuple[str, str]:
        return "loss", "min"

    def uses_pretrained(self, cfg: RunConfig) -> bool:
        return self.options(cfg).detector == PATCHCORE  # the feature detector's backbone; autoencoders start from scratch

    def input_norm(self, cfg: RunConfig) -> str:
        return self.options(cfg).input_norm

    # ------------------------------------------------------------------ config and data
    def check_config(self, cfg: RunConfig, options: AnomalyOptions) -> None:  # type: ignore[override]
        opts = options
        if opts.detector == PATCHCORE:
            if not cfg.model.pretrained and not opts.random_features:
                raise ValueError("task_options.detector: patchcore describes patches with a pretrained backbone; set model.pretrained "
                                 "(e.g. the backbone.safetensors of `medlens pretrain CONFIG`), or task_options.random_features: true "
                                 "for the seeded random backbone")
            if cfg.model.pretrained and opts.random_features:
                raise ValueError("task_options.random_features: true describes patches with a random backbone; remove model.pretrained "
                                 "or set random_features: false")
            if cfg.trainer.max_epochs != 1:
                raise ValueError("trainer.max_epochs: patchcore fills its memory in one pass over the training normals; set it to 1")
            refuse_keys(changed_keys(opts, AUTOENCODER_KEYS, "task_options."), "autoencoder options do not act for task_options.detector: patchcore")
        else:
            if cfg.model.pretrained:
                raise ValueError("model.pretrained: autoencoders are trained from scratch; remove it for task: anomaly "
                                 "(or use task_options.detector: patchcore)")
            refuse_keys(changed_keys(opts, DETECTOR_KEYS, "task_options."), "feature-detector options act only with task_options.detector: patchcore")
        if opts.ae_skip_levels and opts.autoencoder != "unet":
            raise ValueError("task_options.ae_skip_levels: the reversed autoencoder has no skip connections; use autoencoder: unet")

    @classmethod
    def read(cls, cfg: RunConfig) -> SampleTable:
        """Read the source's own labels, then relabel normal vs abnormal."""
        from medlens.data.readers import read_dataset

        normal = cls.parse_options(cfg).normal_label
        return to_anomaly_table(read_dataset(cfg.data.model_copy(update={"task": None})), normal)

    def prepare_table(self, table: SampleTable, cfg: RunConfig) -> SampleTable:
        space = table.label_space
        if space.task != KIND or space.num_labels != 2:
            raise ValueError(f"{table.source}: anomaly training needs the normal-vs-abnormal view (data.task: anomaly), got task {space.task!r}")
        normal = self.options(cfg).normal_label
        if normal and space.names[0] != normal:
            raise ValueError(f"{table.source}: the normal class is {space.names[0]!r} but task_options.normal_label is {normal!r}")
        return table

    def training_rows(self, table: SampleTable, rows: np.ndarray) -> np.ndarray:
        space = table.label_space
        normals = normal_rows(table, rows)
        if len(normals) == 0:
            raise ValueError(f"{table.source}: the training split has no {space.names[0]!r} images to learn from")
        if not np.all(table.targets[normals, 0] == 1):  # the invariant the whole method rests on
            raise RuntimeError("anomaly training table contains non-normal rows")
        log.info("anomaly: training on %d %r images (%d other training rows left out)", len(normals), space.names[0], len(rows) - len(normals))
        return normals

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: RunConfig, space: LabelSpace, meta_encoder: MetadataEncoder | None = None) -> dict[str, Any]:
        return architecture_for_anomaly(cfg, self.options(cfg))

    def create_loss(self, cfg: RunConfig, train_table: SampleTable, preprocessing: Preprocessing) -> nn.Module:
        from medlens.tasks.anomaly.loss import create_reconstruction_loss

        opts = self.options(cfg)
        return create_reconstruction_loss(opts.loss, spec=score_spec_for(cfg, opts, preprocessing))

    def create_module(self, cfg: RunConfig, model: nn.Module, space: LabelSpace, loss: nn.Module, preprocessing: Preprocessing,
                      monitor: tuple[str, str]) -> Any:
        from medlens.engine.module import optim_settings
        from medlens.tasks.anomaly.module import ReconstructionModule

        opts = self.options(cfg)
        spec = score_spec_for(cfg, opts, preprocessing)
        if opts.detector == PATCHCORE:
            from medlens.tasks.anomaly.patchcore import PatchCoreModule

            return PatchCoreModule(model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0],
                                   seed=cfg.seed, score=spec, coreset_candidates=opts.coreset_candidates)
        return ReconstructionModule(model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0],
                                    seed=cfg.seed, score=spec)

    def manifest_section(self, cfg: RunConfig, preprocessing: Preprocessing, space: LabelSpace, train_table: SampleTable) -> dict[str, Any]:
        spec = score_spec_for(cfg, self.options(cfg), preprocessing)
        return {"normal_label": space.names[0], "abnormal_label": space.names[1], **spec.to_dict()}

    def epoch_line(self, row: dict[str, Any], options: AnomalyOptions) -> str:  # type: ignore[override]
        """Validation reconstruction loss on normals (what checkpoints follow) and AUROC for information."""
        parts = [f"{k} {row[f'val/{k}']:.4g}" for k in ("loss", "auroc") if row.get(f"val/{k}") is not None]
        return "  ".join(parts)

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Manifest) -> nn.Module:
        from medlens.models.autoencoder import ScoreSpec
        from medlens.tasks.anomaly.head import AnomalyScoreHead

        return AnomalyScoreHead(model, ScoreSpec.from_dict(section(manifest)))

    map_output = "error_map"

    def map_head(self, model: nn.Module, manifest: Manifest) -> nn.Module:
        from medlens.models.autoencoder import ScoreSpec
        from medlens.tasks.anomaly.head import AnomalyMapHead

        return AnomalyMapHead(model, ScoreSpec.from_dict(section(manifest)))

    def num_outputs(self, manifest: Manifest) -> int:
        return 1

    def activation(self, raw: np.ndarray, manifest: Manifest, calibrated: bool = True) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32)  # the score is final: compared with the fitted threshold

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                            predictor: PredictorLike) -> dict[str, Any]:
        """Threshold flagging ``task_options.anomaly_fpr`` of validation normals; error-map colour scale from them."""
        fpr = self.options(cfg).anomaly_fpr
        normal = val_table.targets[:, 0] == 1
        if not normal.any():
            raise ValueError(f"{val_table.source}: the validation split has no {manifest.label_names[0]!r} images to fit the threshold on")
        thr, got_fpr = fit_threshold(raw_val[normal, 0], fpr)
        from medlens.tasks.anomaly.explain import pixel_error_reference

        pixel_scale = pixel_error_reference(predictor, val_table.subset(np.flatnonzero(normal)))
        manifest.thresholds = [thr]
        manifest.task_section = {**section(manifest),
                                 "threshold": thr, "fpr": fpr, "val_normal_fpr": got_fpr, "n_val_normals": int(normal.sum()),
                                 "threshold_method": "fpr_on_val_normals", "pixel_scale": pixel_scale}
        log.info("anomaly threshold %.6g: flags %.2f%% of %d validation normals (target %.2f%%)", thr, 100 * got_fpr, int(normal.sum()), 100 * fpr)
        return {"threshold_method": "fpr_on_val_normals"}

    def set_threshold(self, manifest: Manifest, threshold: float) -> None:
        """Flag at a fixed score (``evaluate --threshold``)."""
        manifest.thresholds = [float(threshold)]
        manifest.task_section = {**section(manifest), "threshold": float(threshold)}

    def refit_thresholds(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                         predictor: PredictorLike) -> dict[str, Any]:
        return self.fit_operating_point(cfg, manifest, raw_val, val_table, predictor)

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence | None = None) -> dict[str, Any]:
        return anomaly_metrics(scores, targets, manifest, groups=groups)

    # ------------------------------------------------------------------ decisions and presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Manifest) -> list[Prediction]:
        names = manifest.label_names
        th = manifest.thresholds
        thr = float(th[0]) if th else float("inf")
        out: list[Prediction] = []
        for p, src in zip(scores, sources, strict=True):
            score = float(p[0])
            flagged = score >= thr  # abnormal when the score reaches the fitted threshold
            out.append(AnomalyPrediction(src, None, score, thr, bool(flagged), names[1] if flagged else names[0]))
        return out

    def findings(self, prediction: Prediction, manifest: Manifest) -> list[Finding]:
        assert isinstance(prediction, AnomalyPrediction)
        lab = manifest.label_names[1]
        return [Finding(lab, prediction.score, "score", prediction.threshold, "threshold", prediction.flagged)]

    def summary_line(self, prediction: Prediction, manifest: Manifest) -> str:
        assert isinstance(prediction, AnomalyPrediction)
        return super().summary_line(prediction, manifest) + f"  predicted={prediction.label}"

    def outcome(self, prediction: Prediction, manifest: Manifest) -> str:
        assert isinstance(prediction, AnomalyPrediction)
        return prediction.label

    def table_columns(self, manifest: Manifest) -> list[str]:
        lab = manifest.label_names[1]
        return ["anomaly_score", f"threshold_{lab}", f"decision_{lab}", "predicted"]

    def table_row(self, prediction: Prediction, manifest: Manifest) -> list[str]:
        assert isinstance(prediction, AnomalyPrediction)
        f = self.findings(prediction, manifest)[0]
        return ["" if prediction.score is None else f"{prediction.score:.6g}", "" if f.threshold is None else f"{f.threshold:.6g}",
                f.decision, prediction.label]

    def presentation(self, manifest: Manifest) -> Presentation:
        names = manifest.label_names
        sec = section(manifest)
        if (manifest.architecture or {}).get("type") == PATCHCORE:
            what = "how far the image's patches are from the nearest patches of the normal training images"
        else:
            what = "how badly an autoencoder trained on normal images reconstructs it"
        thr, fpr, n = sec.get("threshold"), sec.get("val_normal_fpr"), sec.get("n_val_normals")
        meaning = ""
        if thr is not None and fpr is not None and n:
            meaning = (f" The threshold {float(thr):.4g} flags {100 * float(fpr):.1f}% of the {int(n)} validation normal images: "
                       f"about that share of normal images is flagged (false alarms).")
        return Presentation(
            value_name="Anomaly score", value_kind="score", explain_labels=[names[1]], explain_methods=[ERROR_MAP],
            summary=f"The model outputs an anomaly score: {what}. At or above the threshold the image is flagged "
                    f"{names[1]!r}, below it {names[0]!r}.{meaning} The score is not a probability.",
        )

    # ------------------------------------------------------------------ explanations
    def explain_methods(self) -> list[str]:
        return [ERROR_MAP]

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Explanation]:
        self.check_method(method)
        names = predictor.manifest.label_names
        for lab in labels or []:
            if lab not in names:
                raise ValueError(f"unknown label {lab!r}; this model's labels: {', '.join(names)}")
        from medlens.tasks.anomaly.explain import error_map_explanation

        return [error_map_explanation(predictor, image)]

    def caption(self, method: str) -> str:
        return ("Warm colours mark where the image is least like the normal training images (the pixels an autoencoder "
                "reconstructs worst, or the patches farthest from every normal patch); full colour is the 99.5th percentile "
                "of the map on the validation normals, so the colours mean the same on every image.")
