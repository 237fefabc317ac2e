"""Classification: binary, multiclass and multi-label, with masked unknown labels.

Outputs are logits; scores are probabilities (sigmoid, or softmax for multiclass) after the bundle's
temperature. The operating point is a temperature fitted on validation plus one threshold per label (binary and
multi-label; multiclass decides by arg-max). Explanations are class-activation maps per label.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.tasks.base import (
    Finding,
    Prediction,
    PredictorLike,
    Presentation,
    ReportInputs,
    ReportPart,
    Task,
    changed_keys,
    refuse_keys,
)
from medlens.ood import ood_features
from medlens.tasks.classification.calibration import fit_temperatures
from medlens.tasks.classification.metrics import binary_auroc, classification_metrics, tune_thresholds
from medlens.tasks.classification.options import ClassificationOptions
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

log = logging.getLogger("medlens.train")

#: per-epoch validation keys whose value depends on a decision threshold (computed at 0.5 during training)
AT_HALF = re.compile(r"^val/(raw_|ema_)?(accuracy|hamming_accuracy|exact_match|tp|fp|tn|fn|"
                     r"(f1|precision|recall|sensitivity|specificity)_(macro|micro|weighted))$")


@dataclass
class ClassPrediction(Prediction):
    """A classifier's result for one image.

    Attributes:
        probabilities: label -> probability (binary: both classes; multiclass: softmax; multilabel: sigmoid).
        decisions: label -> bool at the manifest thresholds (binary: the positive class; multiclass: argmax).
        thresholds: label -> threshold used (binary/multilabel).
        predicted: the labels decided positive (multiclass: the argmax class).
    """

    probabilities: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, bool] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@register_task(default=True)
class ClassificationTask(Task):
    """Binary, multiclass and multi-label classification (one instance per label kind)."""

    name = "classification"
    kinds = ("binary", "multiclass", "multilabel")
    options_model = ClassificationOptions
    output_name = "logits"
    headline_metric = "auroc_macro"
    supports_tta = True
    supports_cv = True
    supports_report = True
    supports_mixing = True
    supports_ema = True
    supports_sampler = True
    supports_metadata = True
    uses_backbone = True
    supports_ood = True

    @property
    def supports_thresholds(self) -> bool:  # type: ignore[override]
        """Binary and multi-label decide at thresholds; multiclass by arg-max."""
        return self.kind != "multiclass"

    @property
    def exclusive(self) -> bool:
        """One class per image (softmax and arg-max)."""
        return self.kind == "multiclass"

    @property
    def top_label(self) -> bool:
        return self.exclusive

    @property
    def ensemble_activation(self) -> str:
        """Members' probabilities are averaged as the bundle's activation makes them: softmax or sigmoid."""
        return "softmax" if self.exclusive else "sigmoid"

    # ------------------------------------------------------------------ config and data
    def check_config(self, cfg: RunConfig, options: ClassificationOptions) -> None:  # type: ignore[override]
        """Refuse threshold keys that cannot act (arg-max decisions, a tuned method)."""
        if not self.thresholded:
            refuse_keys(changed_keys(options, ("threshold_method", "fixed_threshold"), "task_options."),
                        "a multiclass model decides by arg-max and has no thresholds")
        elif options.threshold_method != "fixed":
            refuse_keys(changed_keys(options, ("fixed_threshold",), "task_options."),
                        f"acts only with task_options.threshold_method: fixed (here {options.threshold_method!r})")

    @classmethod
    def read(cls, cfg: RunConfig) -> SampleTable:
        """Read a classification dataset as its source labels it."""
        from medlens.data.readers import read_dataset

        return read_dataset(cfg.data)

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: RunConfig, space: LabelSpace, meta_encoder: MetadataEncoder | None = None) -> dict[str, Any]:
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

    def create_loss(self, cfg: RunConfig, train_table: SampleTable, preprocessing: Preprocessing) -> nn.Module:
        from medlens.tasks.classification.losses import create_loss, loss_kwargs

        opts = self.options(cfg)
        known = (~np.isnan(train_table.targets)).sum(axis=0)
        kw = loss_kwargs(opts, self.kind, train_table.positives(), known)
        return create_loss(opts.loss, self.kind, **kw)

    def create_module(self, cfg: RunConfig, model: nn.Module, space: LabelSpace, loss: nn.Module, preprocessing: Preprocessing,
                      monitor: tuple[str, str]) -> Any:
        from medlens.engine.module import optim_settings
        from medlens.tasks.classification.module import MODULES

        return MODULES[self.kind](
            model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0], seed=cfg.seed,
            monitor_mode=monitor[1], channels_last=cfg.trainer.channels_last,
        )

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Manifest) -> nn.Module:
        from medlens.tasks.classification.head import ClassifierHead

        return ClassifierHead(model, bool(manifest.metadata_encoder) or bool(manifest.architecture.get("meta_dim")))

    def feature_head(self, model: nn.Module, manifest: Manifest) -> nn.Module | None:
        from medlens.tasks.classification.head import ClassifierHead

        if not all(hasattr(model, a) for a in ("forward_features", "forward_head", "pool")):
            return None  # an ensemble: no one penultimate feature space
        stages = ood_features(manifest) == "stages" and hasattr(model, "forward_with_stages")
        return ClassifierHead(model, bool(manifest.metadata_encoder) or bool(manifest.architecture.get("meta_dim")), with_features=True,
                              stages=stages)

    def num_outputs(self, manifest: Manifest) -> int:
        return manifest.label_space.num_outputs

    def activation(self, raw: np.ndarray, manifest: Manifest, calibrated: bool = True) -> np.ndarray:
        """Logits / temperature -> probabilities; a list temperature (multi-label) divides column by column."""
        t = np.asarray(manifest.temperature if calibrated else 1.0, dtype=np.float64)
        z = np.asarray(raw, dtype=np.float64) * float((manifest.extra or {}).get("orientation", 1))
        if t.ndim and z.ndim == 2 and t.shape != (z.shape[1],):
            raise ValueError(f"the manifest has {t.size} temperatures for {z.shape[1]} outputs")
        z = z / t
        return (softmax(z) if self.exclusive else sigmoid(z)).astype(np.float32)

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                            predictor: PredictorLike) -> dict[str, Any]:
        """Temperature (``task_options.calibrate``; one per label for multi-label) and thresholds
        (``task_options.threshold_method``) on validation."""
        t = self.options(cfg)
        raw_val = self.check_orientation(t, manifest, raw_val, val_table)  # task_options.orientation_check
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

    def set_threshold(self, manifest: Manifest, threshold: float) -> None:
        """One fixed threshold for every label (``evaluate --threshold``)."""
        if not self.thresholded:
            raise ValueError("a multiclass model decides by arg-max and has no thresholds to set")
        manifest.thresholds = [float(threshold)] * self.num_outputs(manifest)

    def no_thresholds_reason(self) -> str:
        return "this model decides by arg-max over its classes and has no thresholds to set"

    def refit_thresholds(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                         predictor: PredictorLike) -> dict[str, Any]:
        """Thresholds by ``task_options.threshold_method`` on validation; the bundle's temperature and orientation are kept."""
        keep_temperature = cfg.model_copy(update={"task_options": {**cfg.task_options, "calibrate": False, "orientation_check": False}})
        return self.fit_operating_point(keep_temperature, manifest, raw_val, val_table, predictor)

    def threshold_from_overrides(self, options: ClassificationOptions, keys: set[str],  # type: ignore[override]
                                 thresholds_from: str) -> float | None:
        """``--set task_options.fixed_threshold=t`` acts like ``--threshold t`` when the method is ``fixed``; otherwise
        it could not act and is refused, as is ``--set task_options.threshold_method=...`` without
        ``--thresholds-from val`` (a method only acts when thresholds are tuned again)."""
        if "task_options.fixed_threshold" in keys:
            if options.threshold_method != "fixed":
                raise ValueError(
                    f"task_options.fixed_threshold acts only with task_options.threshold_method: fixed (this bundle's is "
                    f"{options.threshold_method!r}); to evaluate at a fixed operating point use --threshold {options.fixed_threshold:g}")
            return options.fixed_threshold if thresholds_from == "bundle" else None  # with "val" the fixed method applies itself
        if "task_options.threshold_method" in keys and thresholds_from != "val":
            raise ValueError("task_options.threshold_method acts in evaluate only with --thresholds-from val (thresholds tuned "
                             "again on validation)")
        return None

    def check_orientation(self, options: ClassificationOptions, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable) -> np.ndarray:
        """``task_options.orientation_check`` (binary): a validation AUROC below 0.5 flips the score.

        The logit's sign goes into ``manifest.extra["orientation"]`` (-1 flipped, 1 kept), which
        :meth:`activation` applies everywhere the bundle is used; a loud warning says so. Returns the validation
        logits as the rest of the operating point sees them.
        """
        if not options.orientation_check:
            return raw_val
        if self.kind != "binary":
            log.warning("task_options.orientation_check applies to binary models only; this %s model is left as trained", self.kind)
            return raw_val
        auroc = binary_auroc(np.asarray(raw_val, dtype=np.float64)[:, 0], val_table.targets[:, 1])
        manifest.extra["orientation"] = -1 if auroc == auroc and auroc < 0.5 else 1
        manifest.extra["orientation_val_auroc_before"] = None if auroc != auroc else float(auroc)
        if manifest.extra["orientation"] == -1:
            log.warning("ORIENTATION FLIPPED: validation AUROC %.3f < 0.5, so the score is reversed (logit negated, "
                        "manifest orientation -1); check the label order %s", auroc, manifest.label_names)
            return -np.asarray(raw_val)
        return raw_val

    def epoch_line(self, row: dict[str, Any], options: ClassificationOptions) -> str:  # type: ignore[override]
        """Validation accuracy and F1 at 0.5 (said so), AUROC, the epoch's validation threshold (binary: max-F1 or
        Youden, as ``task_options.threshold_method``) and, with EMA, the EMA weights' figures and the EMA-raw gap."""

        def num(key: str) -> str | None:
            v = row.get(key)
            return None if not isinstance(v, (int, float)) or v != v else f"{float(v):.4f}"

        parts = []
        raw = "val/raw_" if "val/raw_auroc_macro" in row or "val/raw_accuracy" in row else "val/"
        val = [f"{name} {x}" for name, key in (("acc@0.5", f"{raw}accuracy"), ("F1@0.5", f"{raw}f1_macro"), ("AUROC", f"{raw}auroc_macro"))
               if (x := num(key)) is not None]
        if val:
            parts.append("val " + " ".join(val))
        method = options.threshold_method
        if method == "fixed":
            if "val/threshold_f1" in row or "val/threshold_youden" in row:
                parts.append(f"thr {options.fixed_threshold:g} (fixed)")
        elif (x := num(f"val/threshold_{method}")) is not None:
            parts.append(f"thr {x} ({'max-F1' if method == 'f1' else method})")
        ema = [f"{name} {x}" for name, key in (("acc@0.5", "val/ema_accuracy"), ("F1@0.5", "val/ema_f1_macro"), ("AUROC", "val/ema_auroc_macro"))
               if (x := num(key)) is not None]
        if ema:
            gap = None
            if isinstance(row.get("val/ema_auroc_macro"), (int, float)) and isinstance(row.get("val/raw_auroc_macro"), (int, float)):
                gap = float(row["val/ema_auroc_macro"]) - float(row["val/raw_auroc_macro"])
            parts.append("EMA " + " ".join(ema) + ("" if gap is None or gap != gap else f" (EMA-raw AUROC {gap:+.4f})"))
        return " | ".join(parts)

    def history_column(self, key: str) -> str:
        """Per-epoch rates of a thresholded model are computed at 0.5, not at the threshold fitted at the end: their
        ``history.csv`` columns and curve labels say ``@0.5`` (multiclass decides by arg-max, as deployed)."""
        return f"{key}@0.5" if self.thresholded and AT_HALF.match(key) else key

    def lower_is_better(self, metric: str) -> bool:
        from medlens.tasks.classification.metrics import LOWER_IS_BETTER

        return metric.split("/", 1)[0] in LOWER_IS_BETTER

    #: bootstrap replicates of the headline interval that train and evaluate print (the report uses its own n_boot)
    HEADLINE_BOOTSTRAP = 500

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence | None = None) -> dict[str, Any]:
        """Metrics at the bundle's thresholds, with a (patient-level when groups are given) bootstrap 95 % CI of the
        headline AUROC, so every printed summary shows n and an interval. With patient ids the same replicates also
        give each label's sensitivity, specificity, PPV and NPV at the threshold (``ci.per_label``): the operating
        point's patient-bootstrap intervals beside its Wilson ones (:mod:`.operating`)."""
        from medlens.tasks.classification.operating import BOOTSTRAP_RATES
        from medlens.tasks.classification.uncertainty import bootstrap_ci

        m = classification_metrics(scores, targets, self.kind, manifest.label_names, manifest.thresholds or None, groups=groups)
        if len(scores) and m.get("auroc_macro") is not None:
            m["ci"] = bootstrap_ci(scores, targets, self.kind, manifest.label_names, manifest.thresholds or None, groups=groups,
                                   n_boot=self.HEADLINE_BOOTSTRAP, metrics=("auroc_macro",),
                                   label_metrics=BOOTSTRAP_RATES if groups is not None else ())
        return m

    def epoch_metrics(self, scores: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        return classification_metrics(scores, targets, self.kind, names, warn=False)

    def subgroup_metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence | None,
                         levels: Sequence[str | None], n_boot: int = 500, confidence: float = 0.95, seed: int = 0) -> dict[str, Any] | None:
        """AUROC, sensitivity and specificity at the deployed thresholds per subgroup (binary: the positive class;
        multi-label: the macro and each label), patient-bootstrap intervals, the largest gaps and the size rule
        (:mod:`medlens.tasks.classification.subgroups`). Multiclass: None (no subgroup metrics yet)."""
        if self.kind == "multiclass":
            return None
        from medlens.tasks.classification.subgroups import subgroup_metrics

        return subgroup_metrics(scores, targets, self.kind, manifest.label_names, manifest.thresholds or None, groups, levels,
                                n_boot=n_boot, confidence=confidence, seed=seed)

    # ------------------------------------------------------------------ decisions and presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Manifest) -> list[Prediction]:
        names = manifest.label_names
        th = manifest.thresholds
        preds: list[Prediction] = []
        for p, src in zip(scores, sources, strict=True):
            if self.kind == "binary":
                thr = th[0] if th else 0.5
                pos = float(p[0])
                dec = pos >= thr
                preds.append(ClassPrediction(
                    src, None, {names[0]: 1.0 - pos, names[1]: pos}, {names[1]: bool(dec)}, {names[1]: float(thr)},
                    [names[1] if dec else names[0]],
                ))
            elif self.kind == "multiclass":
                k = int(np.argmax(p))
                preds.append(ClassPrediction(src, None, {n: float(v) for n, v in zip(names, p, strict=True)},
                                             {n: j == k for j, n in enumerate(names)}, {}, [names[k]]))
            else:
                thr = th if th else [0.5] * len(names)
                dec = {n: bool(v >= t) for n, v, t in zip(names, p, thr, strict=True)}
                preds.append(ClassPrediction(
                    src, None, {n: float(v) for n, v in zip(names, p, strict=True)}, dec,
                    {n: float(t) for n, t in zip(names, thr, strict=True)}, [n for n in names if dec[n]],
                ))
        return preds

    def findings(self, prediction: Prediction, manifest: Manifest) -> list[Finding]:
        assert isinstance(prediction, ClassPrediction)
        names = manifest.label_names
        shown = names[1:] if self.kind == "binary" else names  # binary: the negative class is 1 - p(positive)
        rule = "threshold" if self.thresholded else "argmax"
        return [
            Finding(n, prediction.probabilities.get(n), "probability", prediction.thresholds.get(n), rule, n in prediction.predicted)
            for n in shown
        ]

    def summary_line(self, prediction: Prediction, manifest: Manifest) -> str:
        assert isinstance(prediction, ClassPrediction)
        return super().summary_line(prediction, manifest) + f"  predicted={'|'.join(prediction.predicted) or 'none'}"

    def outcome(self, prediction: Prediction, manifest: Manifest) -> str:
        assert isinstance(prediction, ClassPrediction)
        return ", ".join(prediction.predicted) or "none"

    def table_columns(self, manifest: Manifest) -> list[str]:
        """``prob_<label>`` for every label, ``threshold_<f>`` and ``decision_<f>`` per finding, ``predicted``."""
        names = manifest.label_names
        shown = names[1:] if self.kind == "binary" else names
        return [*[f"prob_{n}" for n in names], *[c for n in shown for c in (f"threshold_{n}", f"decision_{n}")], "predicted"]

    def table_row(self, prediction: Prediction, manifest: Manifest) -> list[str]:
        assert isinstance(prediction, ClassPrediction)
        row = [("" if n not in prediction.probabilities else f"{prediction.probabilities[n]:.6f}") for n in manifest.label_names]
        for f in self.findings(prediction, manifest):
            row += ["argmax" if f.rule == "argmax" else "" if f.threshold is None else f"{f.threshold:.6g}", f.decision]
        return [*row, "|".join(prediction.predicted)]

    def presentation(self, manifest: Manifest) -> Presentation:
        """The number is called a probability only when the bundle's calibration error is below the documented bound
        (:data:`~medlens.tasks.classification.operating.ECE_BOUND`), else a score; the error is said beside it."""
        from medlens.tasks.classification.cam_methods import list_methods
        from medlens.tasks.classification.operating import value_word

        names = manifest.label_names
        word, ece, split = value_word(manifest.metrics)
        what = {"binary": f"the probability of {names[-1]}" if word == "probability" else f"a score for {names[-1]}",
                "multiclass": f"one {word} per class (the largest decides)",
                "multilabel": f"one {word} per finding, each with its own threshold"}[self.kind]
        how = ("calibration not measured, so it is a score (0-100 %), not a probability" if ece is None else
               f"calibration error (ECE) {ece:.3f} on the {split} split" + ("" if word == "probability" else
                                                                            ", so it is a score (0-100 %), not a probability"))
        return Presentation(
            value_name=word.capitalize(), value_kind="probability",
            explain_labels=list(names[1:] if self.kind == "binary" else names), explain_methods=list_methods(),
            summary=f"The model outputs {what} ({how}).",
        )

    def operating_point(self, manifest: Manifest) -> dict[str, Any] | None:
        """Sensitivity, specificity, PPV and NPV at the deployed thresholds with Wilson intervals, from the test split
        (else validation), and whether the number reads as a probability (:mod:`.operating`)."""
        from medlens.tasks.classification.operating import operating_point

        names = manifest.label_names
        shown = names[1:] if self.kind == "binary" else names
        th = manifest.thresholds or [0.5] * self.num_outputs(manifest)
        thresholds: dict[str, float | None] = ({n: None for n in shown} if not self.thresholded
                                               else dict(zip(shown, th, strict=True)))
        return operating_point(manifest.metrics, shown, thresholds)

    # ------------------------------------------------------------------ report
    def report_part(self, inputs: ReportInputs) -> ReportPart:
        from medlens.tasks.classification.report import report_part

        return report_part(self.kind, self.top_label, inputs)

    # ------------------------------------------------------------------ explanations
    def explain_methods(self) -> list[str]:
        from medlens.tasks.classification.cam_methods import list_methods

        return list_methods()

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Explanation]:
        from medlens.tasks.classification.cam import explain_cam

        return explain_cam(predictor, image, source, self.kind, labels, self.check_method(method), metadata, target_layer)

    def caption(self, method: str) -> str:
        from medlens.tasks.classification.cam_methods import CAPTIONS

        return CAPTIONS.get(method, "")

    def target_layers(self, model: nn.Module) -> list[str]:
        from medlens.tasks.classification.cam import layer_names

        return layer_names(model)
