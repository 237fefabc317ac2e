"""Regression: a number (an age, a grade) predicted from the image, with a prediction interval.

``data.task: regression`` reads the source's label column as numbers (a blank or non-numeric value drops the row,
with a count: it is never read as 0). The network has one output, learnt on standardised targets; the bundle maps
it back to the target's units. The operating point is a prediction interval: the split-conformal quantile of
absolute validation residuals at ``task_options.interval_level``. Metrics: MAE, RMSE, R^2, Pearson r and the
calibration line, with patient-bootstrap intervals; explanations are Grad-CAM maps of the predicted value.

This folder plus its import line in ``medlens/tasks/__init__.py`` is the whole task: nothing else in medlens
names it (``tests/unit/test_architecture.py`` checks that).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.data.labels import LabelSpace, Layout, register_layout
from medlens.data.samples import SampleTable
from medlens.tasks.base import (
    Finding,
    Prediction,
    PredictorLike,
    Presentation,
    ReportInputs,
    ReportPart,
    Task,
)
from medlens.tasks.registry import register_task
from medlens.tasks.regression.metrics import LOWER_IS_BETTER, interval_halfwidth, regression_metrics
from medlens.tasks.regression.options import RegressionOptions

if TYPE_CHECKING:
    from torch import nn

    from medlens.bundle import Manifest
    from medlens.config import RunConfig
    from medlens.data.metadata import MetadataEncoder
    from medlens.data.transforms import Preprocessing
    from medlens.explanation import Explanation

log = logging.getLogger("medlens.regression")

KIND = "regression"
register_layout(KIND, Layout(exclusive=False, single_output=False, values=True))


@dataclass
class ValuePrediction(Prediction):
    """A predicted value with its interval.

    Attributes:
        name: what is predicted (the label column, e.g. ``Patient Age``).
        value: the predicted value, in the target's units.
        low, high: the prediction interval at ``level``.
        level: the interval's coverage on validation (e.g. 0.9).
    """

    name: str = ""
    value: float | None = None
    low: float | None = None
    high: float | None = None
    level: float | None = None


def target_stats(table: SampleTable, opts: RegressionOptions) -> tuple[float, float]:
    """(mean, sd) of the known training targets, or (0, 1) when ``standardize`` is off or the targets are constant."""
    y = table.targets[:, 0].astype(np.float64)
    y = y[~np.isnan(y)]
    if not opts.standardize or len(y) < 2 or float(np.std(y)) == 0.0:
        return 0.0, 1.0
    return float(np.mean(y)), float(np.std(y))


def to_value_table(table: SampleTable, name: str, opts: RegressionOptions) -> SampleTable:
    """The source's single label per row read as a number; blank, non-numeric and out-of-range rows are dropped and
    counted (one log line), never read as 0."""
    space = table.label_space
    if not space.exclusive:
        raise ValueError(f"{table.source}: task regression needs one value per row; the source lists several labels per row")
    idx = table.class_index()
    numbers = []
    for n in space.names:
        try:
            v = float(n)
        except ValueError:
            v = math.nan
        numbers.append(v if math.isfinite(v) else math.nan)
    values = np.array([numbers[i] if i >= 0 else math.nan for i in idx], dtype=np.float64)
    blank = int(np.sum(idx < 0))
    bad = int(np.sum((idx >= 0) & np.isnan(values)))
    out_of_range = np.zeros(len(values), dtype=bool)
    if opts.min_value is not None:
        out_of_range |= values < opts.min_value
    if opts.max_value is not None:
        out_of_range |= values > opts.max_value
    keep = ~np.isnan(values) & ~out_of_range
    if not keep.any():
        raise ValueError(f"{table.source}: no row has a numeric {name!r} value ({blank} blank, {bad} not a number)")
    if blank or bad or out_of_range.any():
        examples = sorted({space.names[i] for i in idx[(idx >= 0) & np.isnan(values)]})[:3]
        log.warning("%s: %d rows without a numeric %r dropped (%d blank, %d not a number%s, %d outside the range)", table.source,
                    int((~keep).sum()), name, blank, bad, f", e.g. {examples}" if examples else "", int(out_of_range.sum()))
    rows = np.flatnonzero(keep)
    sub = table.subset(rows)
    return SampleTable(LabelSpace((name,), KIND), sub.ids, sub.images, values[rows, None].astype(np.float32), sub.groups, sub.splits,
                       sub.metadata, sub.source, sub.provenance, sub.texts, sub.text_column)


def _digits(width: float) -> int:
    """Decimals that show a value at the resolution of its interval (an interval 26 wide: whole numbers)."""
    if not math.isfinite(width) or width <= 0:
        return 2
    return max(0, min(4, 1 - int(math.floor(math.log10(width)))))


def section(manifest: Manifest) -> dict[str, Any]:
    return dict(manifest.task_section or {})


@register_task
class RegressionTask(Task):
    """A numeric target predicted from the image (a timm backbone with one output)."""

    name = "regression"
    kinds = (KIND,)
    options_model = RegressionOptions
    output_name = "value"
    headline_metric = "mae"
    uses_backbone = True
    supports_report = True

    def default_monitor(self) -> tuple[str, str]:
        return "mae", "min"

    # ------------------------------------------------------------------ config and data
    @classmethod
    def read(cls, cfg: RunConfig) -> SampleTable:
        """Read the source's label column as numbers (the column's name becomes the label)."""
        from medlens.data.readers import read_dataset

        opts = cls.parse_options(cfg)
        name = cfg.data.label_names[0] if cfg.data.label_names and len(cfg.data.label_names) == 1 else (
            getattr(cfg.data, "label_column", None) or "value")
        source = read_dataset(cfg.data.model_copy(update={"task": None, "label_names": None}))
        return to_value_table(source, name, opts)

    def target_summary(self, table: SampleTable) -> dict[str, Any]:
        return table.label_counts()  # n, unknown, mean, min, max of the values

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: RunConfig, space: LabelSpace, meta_encoder: MetadataEncoder | None = None) -> dict[str, Any]:
        m = cfg.model
        return {"type": "classifier", "backbone": m.backbone, "num_outputs": 1, "in_chans": cfg.data.channels,
                "image_size": cfg.data.image_size, "small_input": m.small_input, "drop_rate": m.drop_rate,
                "drop_path_rate": m.drop_path_rate}

    def create_loss(self, cfg: RunConfig, train_table: SampleTable, preprocessing: Preprocessing) -> nn.Module:
        from medlens.tasks.regression.torch_parts import RegressionLoss

        opts = self.options(cfg)
        mean, sd = target_stats(train_table, opts)
        return RegressionLoss(opts.loss, mean, sd, opts.huber_delta)

    def create_module(self, cfg: RunConfig, model: nn.Module, space: LabelSpace, loss: nn.Module, preprocessing: Preprocessing,
                      monitor: tuple[str, str]) -> Any:
        from medlens.engine.module import optim_settings
        from medlens.tasks.regression.torch_parts import RegressionModule

        return RegressionModule(model=model, label_space=space, loss=loss, optim=optim_settings(cfg), monitor_metric=monitor[0],
                                seed=cfg.seed, monitor_mode=monitor[1], channels_last=cfg.trainer.channels_last)

    def manifest_section(self, cfg: RunConfig, preprocessing: Preprocessing, space: LabelSpace, train_table: SampleTable) -> dict[str, Any]:
        opts = self.options(cfg)
        mean, sd = target_stats(train_table, opts)
        return {"target_mean": mean, "target_sd": sd, "interval_level": opts.interval_level, "loss": opts.loss}

    def epoch_line(self, row: dict[str, Any], options: RegressionOptions) -> str:  # type: ignore[override]
        return " ".join(f"{k} {row[f'val/{k}']:.4g}" for k in ("mae", "rmse", "r2") if isinstance(row.get(f"val/{k}"), (int, float)))

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Manifest) -> nn.Module:
        from medlens.tasks.regression.torch_parts import RegressionHead

        return RegressionHead(model)

    def num_outputs(self, manifest: Manifest) -> int:
        return 1

    def activation(self, raw: np.ndarray, manifest: Manifest, calibrated: bool = True) -> np.ndarray:
        """The network's standardised output back in the target's units."""
        s = section(manifest)
        return (np.asarray(raw, dtype=np.float64) * float(s.get("target_sd", 1.0)) + float(s.get("target_mean", 0.0))).astype(np.float32)

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                            predictor: PredictorLike) -> dict[str, Any]:
        """The prediction interval: the split-conformal quantile of |validation residual| at ``interval_level``."""
        level = self.options(cfg).interval_level
        pred = self.activation(raw_val, manifest)[:, 0].astype(np.float64)
        obs = val_table.targets[:, 0].astype(np.float64)
        known = ~np.isnan(obs)
        if known.sum() < 10:
            raise ValueError(f"{val_table.source}: the validation split has {int(known.sum())} numeric values; the prediction "
                             "interval needs at least 10")
        half = interval_halfwidth(pred[known] - obs[known], level)
        manifest.task_section = {**section(manifest), "interval_halfwidth": half, "interval_level": level,
                                 "interval_method": "split_conformal_abs_residual", "n_val": int(known.sum())}
        log.info("regression: %d %% prediction interval +-%.4g (from %d validation residuals)", round(100 * level), half, int(known.sum()))
        return {"interval": {"level": level, "halfwidth": half, "n_val": int(known.sum())}}

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence | None = None) -> dict[str, Any]:
        m = regression_metrics(scores[:, 0], targets[:, 0], groups=groups)
        half = section(manifest).get("interval_halfwidth")
        obs = targets[:, 0]
        known = ~np.isnan(obs)
        if half is not None and known.any():
            m["interval_coverage"] = float(np.mean(np.abs(scores[known, 0] - obs[known]) <= half))
            m["interval_level"] = section(manifest).get("interval_level")
        return m

    def epoch_metrics(self, scores: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        return regression_metrics(scores[:, 0], targets[:, 0], n_boot=0)

    def lower_is_better(self, metric: str) -> bool:
        return metric in LOWER_IS_BETTER

    # ------------------------------------------------------------------ results and presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Manifest) -> list[Prediction]:
        s = section(manifest)
        half, level = s.get("interval_halfwidth"), s.get("interval_level")
        name = manifest.label_names[0]
        out: list[Prediction] = []
        for v, src in zip(np.asarray(scores, dtype=np.float64)[:, 0], sources, strict=True):
            lo, hi = (None, None) if half is None else (float(v - half), float(v + half))
            out.append(ValuePrediction(src, None, name, float(v), lo, hi, level))
        return out

    def _text(self, p: ValuePrediction) -> str:
        if p.value is None:
            return f"{p.name}: -"
        if p.low is None or p.high is None or p.level is None:
            return f"predicted {p.name} {p.value:.3g}"
        d = _digits(p.high - p.low)
        return f"predicted {p.name} {p.value:.{d}f} ({round(100 * p.level)} % interval {p.low:.{d}f}-{p.high:.{d}f})"

    def findings(self, prediction: Prediction, manifest: Manifest) -> list[Finding]:
        assert isinstance(prediction, ValuePrediction)
        p = prediction
        interval = None if p.low is None or p.high is None else (p.low, p.high)
        return [Finding(p.name, p.value, "value", None, "none", None, text=self._text(p), interval=interval)]

    def table_columns(self, manifest: Manifest) -> list[str]:
        n = manifest.label_names[0]
        return [f"predicted_{n}", f"interval_low_{n}", f"interval_high_{n}", "interval_level"]

    def table_row(self, prediction: Prediction, manifest: Manifest) -> list[str]:
        assert isinstance(prediction, ValuePrediction)
        p = prediction
        return ["" if x is None else f"{x:.6g}" for x in (p.value, p.low, p.high, p.level)]

    def presentation(self, manifest: Manifest) -> Presentation:
        s = section(manifest)
        name = manifest.label_names[0]
        level = s.get("interval_level")
        interval = "" if level is None else (f", with a {round(100 * level)} % prediction interval from validation residuals "
                                             f"(about {round(100 * level)} of 100 new cases fall inside it)")
        from medlens.tasks.classification.cam_methods import list_methods

        return Presentation(value_name=f"Predicted {name}", value_kind="value", explain_labels=[name],
                            explain_methods=list_methods(), decision_words=(),
                            summary=f"The model outputs a predicted {name}{interval}. It makes no positive/negative decision.")

    def report_part(self, inputs: ReportInputs) -> ReportPart:
        from medlens.tasks.regression.report import report_part

        return report_part(inputs)

    # ------------------------------------------------------------------ explanations: Grad-CAM of the predicted value
    def explain_methods(self) -> list[str]:
        from medlens.tasks.classification.cam_methods import list_methods

        return list_methods()

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Explanation]:
        from medlens.tasks.classification.cam import explain_cam

        return explain_cam(predictor, image, source, KIND, list(labels or predictor.manifest.label_names), self.check_method(method),
                           None, target_layer)

    def caption(self, method: str) -> str:
        return ("Warm colours mark the regions that raise the predicted value most (gradient of the output); they show "
                "where the network looks, not why.")

    def target_layers(self, model: nn.Module) -> list[str]:
        from medlens.tasks.classification.cam import layer_names

        return layer_names(model)
