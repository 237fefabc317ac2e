"""Classification: binary, multiclass and multi-label, with masked unknown labels.

Outputs are logits; scores are probabilities (sigmoid, or softmax for multiclass) after the bundle's
temperature. The operating point is a temperature fitted on validation plus one threshold per label (binary and
multi-label; multiclass decides by arg-max). Explanations are class-activation maps per label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.tasks.base import (
    Finding,
    Prediction,
    PredictorLike,
    Presentation,
    Task,
    changed_keys,
    refuse_keys,
)
from medlens.tasks.classification.calibration import fit_temperatures
from medlens.tasks.classification.metrics import binary_auroc, classification_metrics, tune_thresholds

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("medlens.train")

#: keys only an autoencoder (``data.task: anomaly``) uses
ANOMALY_KEYS = (
    "data.normal_label", "model.autoencoder", "model.ae_depth", "model.ae_width", "model.latent_dim", "model.ae_skip_levels",
    "model.anomaly_score", "model.anomaly_map", "model.score_percentile", "model.anomaly_fpr",
    "model.detector", "model.memory_size", "model.patch_layers", "model.input_norm",
)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class ClassificationTask(Task):
    """Binary, multiclass and multi-label classification (one instance per label kind)."""

    name = "classification"
    kinds = ("binary", "multiclass", "multilabel")
    output_name = "logits"
    headline_metric = "auroc_macro"

    @property
    def exclusive(self) -> bool:
        """One class per image (softmax and arg-max)."""
        return self.kind == "multiclass"

    @property
    def top_label(self) -> bool:
        return self.exclusive

    @property
    def thresholded(self) -> bool:
        """Decisions at per-label thresholds (binary, multi-label)."""
        return self.kind != "multiclass"

    @property
    def ensemble_activation(self) -> str:
        """Members' probabilities are averaged as the bundle's activation makes them: softmax or sigmoid."""
        return "softmax" if self.exclusive else "sigmoid"

    # ------------------------------------------------------------------ config and data
    def check_config(self, cfg: Any) -> None:
        """Refuse autoencoder keys, and threshold keys that cannot act (arg-max decisions, a tuned method)."""
        refuse_keys(changed_keys(cfg, ANOMALY_KEYS), "anomaly-detection options act only with data.task: anomaly")
        if not self.thresholded:
            refuse_keys(changed_keys(cfg, ("trainer.threshold_method", "trainer.fixed_threshold")),
                        "a multiclass model decides by arg-max and has no thresholds")
        elif cfg.trainer.threshold_method != "fixed":
            refuse_keys(changed_keys(cfg, ("trainer.fixed_threshold",)),
                        f"acts only with trainer.threshold_method: fixed (here {cfg.trainer.threshold_method!r})")

    @classmethod
    def read(cls, data_cfg: Any):
        """Read a classification dataset as its source labels it."""
        from medlens.data.readers import read_dataset

        return read_dataset(data_cfg)

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: Any, space: Any, meta_encoder: Any = None) -> dict[str, Any]:
        m = cfg.model
        arch: dict[str, Any] = {
            "type": "classifier", "backbone": m.backbone, "num_outputs": space.num_outputs, "in_chans": cfg.data.channels,
            "image_size": cfg.data.image_size, "small_input": m.small_input, "drop_rate": m.drop_rate,
            "drop_path_rate": m.drop_path_rate,
        }
        if meta_encoder is not None and meta_encoder.dim > 0 and cfg.data.metadata is not None:
            md = cfg.data.metadata
            arch.update(type="fusion", meta_dim=meta_encoder.dim, meta_hidden=list(md.hidden), meta_dropout=md.dropout)
            arch.update(meta_encoder.architecture())
        return arch

    def create_loss(self, cfg: Any, train_table: Any, preprocessing: Any) -> nn.Module:
        from medlens.tasks.classification.losses import create_loss, loss_kwargs

        known = (~np.isnan(train_table.targets)).sum(axis=0)
        kw = loss_kwargs(cfg.optim, self.kind, train_table.positives(), known)
        return create_loss(cfg.optim.loss, self.kind, **kw)

    def create_module(self, cfg: Any, model: nn.Module, space: Any, loss: nn.Module, preprocessing: Any, monitor: tuple[str, str]) -> Any:
        from medlens.engine.module import optim_settings
        from medlens.tasks.classification.module import MODULES

        return MODULES[self.kind](
            model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0], seed=cfg.seed,
            monitor_mode=monitor[1], channels_last=cfg.trainer.channels_last,
        )

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Any) -> nn.Module:
        from medlens.tasks.classification.head import ClassifierHead

        return ClassifierHead(model, bool(manifest.metadata_encoder) or bool(manifest.architecture.get("meta_dim")))

    def num_outputs(self, manifest: Any) -> int:
        return manifest.label_space.num_outputs

    def activation(self, raw: np.ndarray, manifest: Any, calibrated: bool = True) -> np.ndarray:
        """Logits / temperature -> probabilities; a list temperature (multi-label) divides column by column."""
        t = np.asarray(manifest.temperature if calibrated else 1.0, dtype=np.float64)
        z = np.asarray(raw, dtype=np.float64) * float((manifest.extra or {}).get("orientation", 1))
        if t.ndim and z.ndim == 2 and t.shape != (z.shape[1],):
            raise ValueError(f"the manifest has {t.size} temperatures for {z.shape[1]} outputs")
        z = z / t
        return (softmax(z) if self.exclusive else sigmoid(z)).astype(np.float32)

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: Any, manifest: Any, raw_val: np.ndarray, val_table: Any, predictor: PredictorLike) -> dict[str, Any]:
        """Temperature (``trainer.calibrate``; one per label for multi-label) and thresholds (``trainer.threshold_method``) on validation."""
        raw_val = self.check_orientation(cfg, manifest, raw_val, val_table)  # trainer.orientation_check
        t = cfg.trainer
        out: dict[str, Any] = {}
        if t.calibrate:
            fit = fit_temperatures(raw_val, val_table.targets, self.kind, manifest.label_names)
            manifest.temperature = fit["temperature"]
            out["calibration"] = fit  # the fitted values, the search range and the bound warnings, in metrics.json
        if self.thresholded:
            probs = self.activation(raw_val, manifest)
            n = manifest.label_space.num_outputs
            if t.threshold_method == "fixed":
                manifest.thresholds = [float(t.fixed_threshold)] * n
            else:
                manifest.thresholds = tune_thresholds(probs, val_table.targets, self.kind, t.threshold_method)
        return {"threshold_method": t.threshold_method if self.thresholded else "argmax", **out}

    def check_orientation(self, cfg: Any, manifest: Any, raw_val: np.ndarray, val_table: Any) -> np.ndarray:
        """``trainer.orientation_check`` (binary): a validation AUROC below 0.5 flips the score.

        The logit's sign goes into ``manifest.extra["orientation"]`` (-1 flipped, 1 kept), which
        :meth:`activation` applies everywhere the bundle is used; a loud warning says so. Returns the validation
        logits as the rest of the operating point sees them.
        """
        if not getattr(cfg.trainer, "orientation_check", False):
            return raw_val
        if self.kind != "binary":
            log.warning("trainer.orientation_check applies to binary models only; this %s model is left as trained", self.kind)
            return raw_val
        auroc = binary_auroc(np.asarray(raw_val, dtype=np.float64)[:, 0], val_table.targets[:, 1])
        manifest.extra["orientation"] = -1 if auroc == auroc and auroc < 0.5 else 1
        manifest.extra["orientation_val_auroc_before"] = None if auroc != auroc else float(auroc)
        if manifest.extra["orientation"] == -1:
            log.warning("ORIENTATION FLIPPED: validation AUROC %.3f < 0.5, so the score is reversed (logit negated, "
                        "manifest orientation -1); check the label order %s", auroc, manifest.label_names)
            return -np.asarray(raw_val)
        return raw_val

    #: bootstrap replicates of the headline interval that train and evaluate print (the report uses its own n_boot)
    HEADLINE_BOOTSTRAP = 500

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Any, groups: Sequence | None = None) -> dict[str, Any]:
        """Metrics at the bundle's thresholds, with a (patient-level when groups are given) bootstrap 95 % CI of the
        headline AUROC, so every printed summary shows n and an interval."""
        from medlens.tasks.classification.uncertainty import bootstrap_ci

        m = classification_metrics(scores, targets, self.kind, manifest.label_names, manifest.thresholds or None, groups=groups)
        if len(scores) and m.get("auroc_macro") is not None:
            m["ci"] = bootstrap_ci(scores, targets, self.kind, manifest.label_names, manifest.thresholds or None, groups=groups,
                                   n_boot=self.HEADLINE_BOOTSTRAP, metrics=("auroc_macro",), label_metrics=())
        return m

    def epoch_metrics(self, scores: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        return classification_metrics(scores, targets, self.kind, names, warn=False)

    # ------------------------------------------------------------------ decisions and presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Any) -> list[Prediction]:
        names = manifest.label_names
        th = manifest.thresholds
        preds = []
        for p, src in zip(scores, sources, strict=True):
            if self.kind == "binary":
                thr = th[0] if th else 0.5
                pos = float(p[0])
                dec = pos >= thr
                preds.append(Prediction(
                    src, {names[0]: 1.0 - pos, names[1]: pos}, {names[1]: bool(dec)}, {names[1]: float(thr)},
                    [names[1] if dec else names[0]],
                ))
            elif self.kind == "multiclass":
                k = int(np.argmax(p))
                preds.append(Prediction(src, {n: float(v) for n, v in zip(names, p, strict=True)}, {n: j == k for j, n in enumerate(names)}, {}, [names[k]]))
            else:
                thr = th if th else [0.5] * len(names)
                dec = {n: bool(v >= t) for n, v, t in zip(names, p, thr, strict=True)}
                preds.append(Prediction(
                    src, {n: float(v) for n, v in zip(names, p, strict=True)}, dec,
                    {n: float(t) for n, t in zip(names, thr, strict=True)}, [n for n in names if dec[n]],
                ))
        return preds

    def findings(self, prediction: Prediction, manifest: Any) -> list[Finding]:
        names = manifest.label_names
        shown = names[1:] if self.kind == "binary" else names  # binary: the negative class is 1 - p(positive)
        rule = "threshold" if self.thresholded else "argmax"
        return [
            Finding(n, prediction.probabilities.get(n), "probability", prediction.thresholds.get(n), rule, n in prediction.predicted)
            for n in shown
        ]

    def presentation(self, manifest: Any) -> Presentation:
        from medlens.tasks.classification.cam_methods import list_methods

        names = manifest.label_names
        what = {"binary": f"the probability of {names[-1]}", "multiclass": "one probability per class (the largest decides)",
                "multilabel": "one probability per finding, each with its own threshold"}[self.kind]
        return Presentation(
            value_name="Probability", value_kind="probability",
            explain_labels=list(names[1:] if self.kind == "binary" else names), explain_methods=list_methods(),
            summary=f"The model outputs {what}.",
        )

    # ------------------------------------------------------------------ explanations
    def explain_methods(self) -> list[str]:
        from medlens.tasks.classification.cam_methods import list_methods

        return list_methods()

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Any]:
        from medlens.tasks.classification.cam import explain_cam

        return explain_cam(predictor, image, source, self.kind, labels, self.check_method(method), metadata, target_layer)

    def caption(self, method: str) -> str:
        from medlens.tasks.classification.cam_methods import CAPTIONS

        return CAPTIONS.get(method, "")

    def target_layers(self, model: nn.Module) -> list[str]:
        from medlens.tasks.classification.cam import layer_names

        return layer_names(model)
