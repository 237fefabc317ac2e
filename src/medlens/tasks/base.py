"""The :class:`Task` interface: everything that differs between tasks lives behind it.

A task owns its config section (``task_options``, a pydantic model it validates), its manifest section
(``manifest.task_section``, written and read only by the task), its network spec, loss, LightningModule, outputs ->
scores, operating point, metrics, its prediction record and how it is shown, explanation methods and ONNX head.
The pipeline (``medlens.train``), the predictors, export, explain, evaluate, the reports, the CLI and the server ask
the task object; none of them tests a task name. Optional capabilities (test-time augmentation, thresholds,
k-fold, the evaluation report, explanations, ...) are absent unless a task declares them, and every consumer says
so in one line when a task lacks one. Adding a task is one folder under ``medlens/tasks/`` plus one registry line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from medlens.config import ConfigError
from medlens.provenance import manifest_training_data
from medlens.registry import close_matches

if TYPE_CHECKING:  # no torch at import: ONNX Runtime predicts without it
    from torch import nn

    from medlens.bundle import Manifest
    from medlens.config import RunConfig
    from medlens.data.labels import LabelSpace
    from medlens.data.metadata import MetadataEncoder
    from medlens.data.samples import SampleTable
    from medlens.data.transforms import Preprocessing
    from medlens.explanation import Explanation

#: the decision vocabulary of tasks that decide positive/negative (the page, the CLI and the reports show it)
POSITIVE = "positive"
NEGATIVE = "negative"


@dataclass
class Prediction:
    """One input's result. Each task subclasses it with its own fields (probabilities and decisions, a score and a
    flag, a value and an interval); the layers above only read ``source`` and ``error`` and ask the task for the rest.

    Attributes:
        source: the file name or a description of the input.
        error: why the input could not be predicted (then the task's fields are empty).
        ood_score: the out-of-distribution gate's score (None: the bundle has no gate).
        ood: the score is above the gate's threshold: the input is unlike the training images and the result is
            not reliable (None: no gate).
        ood_threshold: the gate's threshold.
        text: free text carried with the input (``data.text_column``, e.g. its radiology report; ``predict --text``):
            shown in the predictions CSV and the per-image report, never given to the model.
    """

    source: str
    error: str | None = None
    ood_score: float | None = field(default=None, kw_only=True)
    ood: bool | None = field(default=None, kw_only=True)
    ood_threshold: float | None = field(default=None, kw_only=True)
    text: str | None = field(default=None, kw_only=True)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Finding:
    """One row of a result as every surface shows it (CLI line, report row, web page row).

    Attributes:
        label: the finding's name.
        value: the probability, score or predicted value (None when unavailable).
        value_kind: ``probability`` (shown as a percentage), ``score`` (a number compared with a threshold) or
            ``value`` (a predicted quantity, e.g. an age).
        threshold: the operating point the value is compared with (None for arg-max decisions and values).
        rule: ``threshold`` (value >= threshold), ``argmax`` (the most probable class) or ``none`` (no decision).
        positive: the decision; None when the task makes none (a predicted value).
        text: the task's own words for the finding (e.g. ``predicted age 57 (90 % interval 44-70)``); shown
            instead of the value and decision columns when set.
        interval: (low, high) of a predicted value, when the task gives one.
    """

    label: str
    value: float | None
    value_kind: str
    threshold: float | None
    rule: str
    positive: bool | None
    text: str = ""
    interval: tuple[float, float] | None = None

    @property
    def decision(self) -> str:
        """``positive``/``negative``, or empty when the task makes no decision."""
        return "" if self.positive is None else (POSITIVE if self.positive else NEGATIVE)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = None if self.interval is None else list(self.interval)
        return {**d, "decision": self.decision or None}

    def value_text(self) -> str:
        if self.value is None or self.value != self.value:
            return "-"
        return f"{self.value:.4f}" if self.value_kind == "probability" else f"{self.value:.4g}"

    def threshold_text(self) -> str:
        if self.rule == "argmax":
            return "argmax"
        return "-" if self.threshold is None else (f"{self.threshold:.3f}" if self.value_kind == "probability" else f"{self.threshold:.4g}")


@dataclass(frozen=True)
class Presentation:
    """How a task's results are shown (published by ``GET /v1/model``; the web page renders from it).

    Attributes:
        value_name: column title of the value (``Probability``, ``Anomaly score``, ``Predicted value``).
        value_kind: ``probability`` (0..1, a percentage with a bar), ``score`` or ``value`` (a number).
        explain_labels: labels a user can ask an explanation for (empty: none).
        explain_methods: explanation methods offered; the first is the default (empty: the task has none).
        decision_words: the words for a positive and a negative decision (empty: the task makes no decision).
        summary: one sentence on what the model outputs.
    """

    value_name: str
    value_kind: str
    explain_labels: list[str]
    explain_methods: list[str]
    decision_words: tuple[str, ...] = (POSITIVE, NEGATIVE)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision_words"] = list(self.decision_words)
        return d


@dataclass
class ReportInputs:
    """What the evaluation report (``medlens report``) gives a task: the scored split and the report's settings.

    Attributes:
        manifest: the bundle's manifest.
        table: the evaluated split's rows (targets, groups).
        scores: the task's scores of those rows (calibrated when ``calibrated``).
        raw_scores: the same without calibration (temperature 1).
        split: the split's name.
        calibrated: whether ``scores`` apply the bundle's calibration.
        n_boot, confidence, seed: the bootstrap settings of every interval.
        required_sensitivity: the sensitivity target of a threshold sweep.
        validation: scores the validation split on demand: ``(table, scores)``, or None when there is none.
    """

    manifest: Manifest
    table: SampleTable
    scores: np.ndarray
    raw_scores: np.ndarray
    split: str
    calibrated: bool
    n_boot: int
    confidence: float
    seed: int
    required_sensitivity: float
    validation: Callable[[], tuple[SampleTable, np.ndarray] | None]


@dataclass
class ReportPart:
    """A task's part of the evaluation report.

    Attributes:
        metrics: point metrics of the split (``metrics`` in report.json; config targets are checked on them).
        ci: their intervals (``ci`` in report.json; targets are also checked at the interval's bound).
        cards: headline cards, (title, {value, low, high}) each.
        sections: HTML sections in order (every value already escaped).
        json: more data for report.json (curves, thresholds, calibration, ...).
        warnings: what a reader must not miss.
        interval_note: how the intervals were made, one line for the provenance table.
    """

    metrics: dict[str, Any]
    ci: dict[str, Any]
    cards: list[tuple[str, dict[str, Any] | None]]
    sections: list[str]
    json: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    interval_note: str = ""


class PredictorLike(Protocol):
    """What tasks need from a predictor (:class:`medlens.inference.Predictor` satisfies it)."""

    manifest: Manifest
    batch_size: int

    @property
    def model(self) -> nn.Module: ...

    def transform(self, image: np.ndarray) -> np.ndarray: ...

    def predict(self, inputs: Any, metadata: Any = None, names: Any = None) -> list[Prediction]: ...

    def predict_table(self, table: SampleTable, logits: bool = False) -> np.ndarray: ...

    def encode_metadata(self, metadata: Any, n: int) -> np.ndarray | None: ...


class TaskOptions(BaseModel):
    """Base of a task's own config section (``task_options`` in the YAML): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), coerce_numbers_to_str=True)


def changed_keys(obj: BaseModel, keys: Sequence[str], prefix: str = "") -> list[str]:
    """The dotted ``keys`` (``section.key``, or plain keys of an options model) whose value differs from the schema
    default, each named ``prefix + key``.

    Compared by value, not by presence, so a saved config (every key written out) is judged like the YAML it came
    from. Example: ``changed_keys(opts, ["ae_depth"], "task_options.")`` is ``["task_options.ae_depth"]`` when the
    config sets it to 4.
    """
    out = []
    for key in keys:
        *path, leaf = key.split(".")
        node: Any = obj
        for part in path:
            node = getattr(node, part)
        info = type(node).model_fields[leaf]
        if getattr(node, leaf) != info.get_default(call_default_factory=True):
            out.append(prefix + key)
    return out


def refuse_keys(keys: Sequence[str], why: str) -> None:
    """One clear ``ValueError`` naming the keys that cannot act, and why (no-op when ``keys`` is empty)."""
    if keys:
        raise ValueError(f"{', '.join(keys)}: {why}; remove {'them' if len(keys) > 1 else 'it'}")


def ood_text(prediction: Prediction) -> str:
    """The words every surface shows for an input the out-of-distribution gate flags."""
    return (f"OUTSIDE THE TRAINING DISTRIBUTION: score {prediction.ood_score:.3g} above {prediction.ood_threshold:.3g}; "
            "the finding below is not reliable")


def lookup_metric(metrics: dict[str, Any], name: str) -> float | None:
    """A metric by name (``auroc_macro``), or per label (``auroc/Effusion``) in ``metrics["per_label"]``; None when
    absent or not a finite number.

    Example:
        >>> lookup_metric({"auroc_macro": 0.9, "per_label": {"E": {"auroc": 0.8}}}, "auroc/E")
        0.8
    """
    if "/" in name:
        metric, label = name.split("/", 1)
        v = (metrics.get("per_label") or {}).get(label, {}).get(metric)
    else:
        v = metrics.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


#: core options that act only for a task with the capability: (key, is it in use?, capability attribute, what it is)
CORE_CAPABILITIES: tuple[tuple[str, Callable[[Any], bool], str, str], ...] = (
    ("trainer.tta", lambda c: bool(c.trainer.tta), "supports_tta", "test-time augmentation"),
    ("optim.mixup_alpha", lambda c: c.optim.mixup_alpha > 0, "supports_mixing", "mixup"),
    ("optim.cutmix_alpha", lambda c: c.optim.cutmix_alpha > 0, "supports_mixing", "cutmix"),
    ("optim.ema", lambda c: bool(c.optim.ema), "supports_ema", "an exponential moving average of the weights"),
    ("data.sampler", lambda c: c.data.sampler != "default", "supports_sampler", "class-balanced sampling"),
    ("data.metadata", lambda c: c.data.metadata is not None, "supports_metadata", "image + metadata fusion"),
    ("model.checkpoint", lambda c: bool(c.model.checkpoint), "uses_backbone", "a classifier backbone checkpoint"),
    ("model.drop_rate", lambda c: c.model.drop_rate > 0, "uses_backbone", "backbone dropout"),
    ("model.drop_path_rate", lambda c: c.model.drop_path_rate > 0, "uses_backbone", "backbone stochastic depth"),
    ("optim.backbone_lr", lambda c: c.optim.backbone_lr is not None, "uses_backbone", "a backbone learning rate"),
    ("optim.freeze_backbone", lambda c: bool(c.optim.freeze_backbone), "uses_backbone", "a frozen backbone"),
    ("optim.freeze_epochs", lambda c: c.optim.freeze_epochs > 0, "uses_backbone", "backbone warm-up freezing"),
    ("ood.method", lambda c: c.ood.method not in ("mahalanobis", "none"), "supports_ood", "an out-of-distribution gate"),
    ("ood.features", lambda c: c.ood.features != "stages", "supports_ood", "an out-of-distribution gate"),
    ("ood.k", lambda c: c.ood.k != 10, "supports_ood", "an out-of-distribution gate"),
    ("ood.val_pass", lambda c: c.ood.val_pass != 0.95, "supports_ood", "an out-of-distribution gate"),
    ("ood.max_train", lambda c: c.ood.max_train != 4096, "supports_ood", "an out-of-distribution gate"),
)


class Task:
    """Base class of a task; one instance per label kind it serves (``Task.kind``).

    Subclasses set :attr:`name`, :attr:`kinds`, :attr:`options_model` and the capabilities they have, and implement
    the hooks below. Methods take explicit inputs (arrays, manifests, configs) so that the layers above (inference,
    training, serving) stay task-free. Every capability is off unless the task turns it on.
    """

    name: ClassVar[str] = "base"
    #: label-space kinds this task serves (``LabelSpace.task``, ``data.task``)
    kinds: ClassVar[tuple[str, ...]] = ()
    #: the task's own config section (``task_options``)
    options_model: ClassVar[type[TaskOptions]] = TaskOptions
    #: name of the ONNX output
    output_name: ClassVar[str] = "output"
    #: headline metric key of this task's metrics (printed after training and evaluation)
    headline_metric: ClassVar[str] = "loss"
    # ---- capabilities (absent by default; consumers refuse what a task lacks, in one line)
    #: test-time augmentation (flips) makes sense for this task's outputs
    supports_tta: ClassVar[bool] = False
    #: ``medlens cv`` (k-fold) is supported
    supports_cv: ClassVar[bool] = False
    #: the evaluation report (``medlens report``) is supported
    supports_report: ClassVar[bool] = False
    #: decisions compare a score with thresholds a user may set (``evaluate --threshold``, ``--thresholds-from``)
    supports_thresholds: ClassVar[bool] = False
    #: mixup / cutmix batches
    supports_mixing: ClassVar[bool] = False
    #: an exponential moving average of the weights
    supports_ema: ClassVar[bool] = False
    #: class-balanced sampling (``data.sampler: weighted``)
    supports_sampler: ClassVar[bool] = False
    #: image + tabular metadata fusion (``data.metadata``)
    supports_metadata: ClassVar[bool] = False
    #: the network is a timm backbone with a head (``model.checkpoint``, dropout, backbone LR and freezing apply)
    uses_backbone: ClassVar[bool] = False
    #: an out-of-distribution gate is fitted on the penultimate features at the end of training (``ood`` section)
    supports_ood: ClassVar[bool] = False

    def __init__(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ValueError(f"task {self.name!r} serves {', '.join(self.kinds)}, not {kind!r}")
        self.kind = kind

    @property
    def top_label(self) -> bool:
        """Scores are one distribution over classes (calibration and confusion are top-label / K x K)."""
        return False

    @property
    def thresholded(self) -> bool:
        """Decisions compare each score with its own threshold (otherwise: arg-max or none)."""
        return self.supports_thresholds

    @property
    def ensemble_activation(self) -> str | None:
        """How an ensemble of this task's bundles averages its members (``softmax`` or ``sigmoid`` probabilities),
        None when bundles of this task cannot be ensembled."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r})"

    # ------------------------------------------------------------------ config and data
    def options(self, cfg: RunConfig) -> TaskOptions:
        """This task's validated ``task_options`` section.

        Raises:
            ConfigError: an unknown key or a bad value, named ``task_options.KEY``.
        """
        return self.parse_options(cfg)

    @classmethod
    def parse_options(cls, cfg: RunConfig) -> TaskOptions:
        """:meth:`options` for the class (readers run before a task object exists)."""
        self = cls
        try:
            return self.options_model.model_validate(cfg.task_options)
        except ValidationError as err:
            parts = []
            for e in err.errors():
                loc = ".".join(str(x) for x in e["loc"])
                # the YAML line, --set item or variable that gave it (RunConfig.where)
                where = cfg.where(f"task_options.{loc}") if hasattr(cfg, "where") else ""
                if e["type"] == "extra_forbidden":
                    valid = list(self.options_model.model_fields)
                    close = close_matches(str(e["loc"][-1]), valid, n=1)
                    hint = f"did you mean task_options.{close[0]}? " if close else ""
                    parts.append(f"{where}task_options.{loc}: unknown key for task {self.name!r} ({hint}valid: {', '.join(valid)})")
                else:
                    parts.append(f"{where}task_options.{loc}: {e['msg']}")
            raise ConfigError("; ".join(parts)) from None

    def validate_config(self, cfg: RunConfig) -> None:
        """Every check of a config for this task: core options it has no capability for, its own section, then
        :meth:`check_config`. One ``ValueError`` naming the key."""
        in_use = [(key, what) for key, used, cap, what in CORE_CAPABILITIES if not getattr(self, cap) and used(cfg)]
        if in_use:
            keys = ", ".join(k for k, _ in in_use)
            raise ValueError(f"{keys}: {', '.join(w for _, w in in_use)} cannot act for task {self.name!r} "
                             f"(data.task: {self.kind}); remove {'them' if len(in_use) > 1 else 'it'}")
        self.check_config(cfg, self.options(cfg))

    def check_config(self, cfg: RunConfig, options: TaskOptions) -> None:
        """Refuse combinations of options that cannot act for this task (one clear message)."""

    def uses_pretrained(self, cfg: RunConfig) -> bool:
        """Whether ``model.pretrained`` is loaded into this config's network (default: when it has a timm backbone)."""
        return self.uses_backbone

    def input_norm(self, cfg: RunConfig) -> str:
        """How the network normalises its input beyond ``data.mean``/``std`` (``dataset``, or ``image``: per image);
        ``medlens pretrain`` normalises its views the same way."""
        return "dataset"

    @classmethod
    def read(cls, cfg: RunConfig) -> SampleTable:
        """Read the dataset a config describes, labelled as this task needs."""
        raise NotImplementedError

    def prepare_table(self, table: SampleTable, cfg: RunConfig) -> SampleTable:
        """The dataset as this task sees it (e.g. the normal-vs-abnormal view); default: unchanged."""
        return table

    def training_rows(self, table: SampleTable, rows: np.ndarray) -> np.ndarray:
        """Rows of the training split the network learns from; default: all."""
        return np.asarray(rows, dtype=np.int64)

    def default_monitor(self) -> tuple[str, str]:
        """(validation metric without ``val/``, mode) followed by checkpoints by default."""
        return self.headline_metric, "max"

    def target_summary(self, table: SampleTable) -> dict[str, Any]:
        """What the targets of a table hold, for run summaries and reports (default: per-label counts)."""
        return table.label_counts()

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: RunConfig, space: LabelSpace, meta_encoder: MetadataEncoder | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def create_loss(self, cfg: RunConfig, train_table: SampleTable, preprocessing: Preprocessing) -> nn.Module:
        raise NotImplementedError

    def create_module(self, cfg: RunConfig, model: nn.Module, space: LabelSpace, loss: nn.Module, preprocessing: Preprocessing,
                      monitor: tuple[str, str]) -> Any:
        """The LightningModule that trains ``model`` (``monitor``: the validation metric and mode checkpoints follow)."""
        raise NotImplementedError

    def manifest_section(self, cfg: RunConfig, preprocessing: Preprocessing, space: LabelSpace,
                         train_table: SampleTable) -> dict[str, Any] | None:
        """This task's own manifest section (``manifest.task_section``) written at training time (None: none).
        Only the task reads it; the core stores it as given."""
        return None

    def history_column(self, key: str) -> str:
        """The name ``history.csv`` and the report's training curves give a per-epoch key (e.g. ``val/accuracy@0.5``
        for a rate computed at a fixed 0.5 rather than at the deployed threshold); default: the key itself."""
        return key

    def epoch_line(self, row: dict[str, Any], options: TaskOptions) -> str:
        """The task's part of the per-epoch console line, from one ``history`` row (``val/...`` metrics)."""
        key = f"val/{self.headline_metric}"
        v = row.get(key)
        return "" if v is None else f"{self.headline_metric} {v:.3f}"

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Manifest) -> nn.Module:
        """``(image, metadata) -> raw outputs (N, K)``: the graph the torch predictor runs and ONNX exports."""
        raise NotImplementedError

    def feature_head(self, model: nn.Module, manifest: Manifest) -> nn.Module | None:
        """``(image, metadata) -> (raw outputs, pooled penultimate features)`` in one pass, for the out-of-distribution
        gate (``supports_ood``); None when the network has no such features."""
        return None

    #: name of the per-pixel map output the ONNX graph carries beside the task's output ("" = none), see :meth:`map_head`
    map_output: str = ""

    def map_head(self, model: nn.Module, manifest: Manifest) -> nn.Module | None:
        """``(image, metadata) -> (raw outputs, per-pixel map (N, 1, H, W))`` in one pass, exported to ONNX as the
        outputs ``output_name`` and :attr:`map_output` so an ONNX-only deployment can draw the task's map too;
        None (the default) when the task has no such map."""
        return None

    def num_outputs(self, manifest: Manifest) -> int:
        raise NotImplementedError

    def activation(self, raw: np.ndarray, manifest: Manifest, calibrated: bool = True) -> np.ndarray:
        """Raw outputs -> the scores decisions are made on (probabilities, anomaly scores, predicted values)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                            predictor: PredictorLike) -> dict[str, Any] | None:
        """Fit thresholds / temperature / intervals on validation and store them in ``manifest``; what it returns
        goes into the run's metrics."""
        return None

    def no_thresholds_reason(self) -> str:
        """Why ``evaluate --threshold`` / ``--thresholds-from val`` cannot act for this task (one phrase)."""
        return f"a {self.name} model ({self.kind}) makes no thresholded decision, so there are no thresholds to set"

    def set_threshold(self, manifest: Manifest, threshold: float) -> None:
        """Decide at a fixed ``threshold`` (``evaluate --threshold``); only tasks with ``supports_thresholds``."""
        raise ValueError(self.no_thresholds_reason())

    def refit_thresholds(self, cfg: RunConfig, manifest: Manifest, raw_val: np.ndarray, val_table: SampleTable,
                         predictor: PredictorLike) -> dict[str, Any] | None:
        """Tune the thresholds again on validation, the rest of the operating point kept (``--thresholds-from val``)."""
        raise ValueError(self.no_thresholds_reason())

    def threshold_from_overrides(self, options: TaskOptions, keys: set[str], thresholds_from: str) -> float | None:
        """A fixed threshold asked for through ``--set task_options.KEY=...`` (None: none); refuses overrides of
        threshold options that cannot act in an evaluation."""
        return None

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def epoch_metrics(self, scores: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """Per-epoch validation metrics (no thresholds, no warnings)."""
        raise NotImplementedError

    def subgroup_metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence | None,
                         levels: Sequence[str | None], n_boot: int = 500, confidence: float = 0.95, seed: int = 0) -> dict[str, Any] | None:
        """Performance per subgroup of one metadata column (``levels``: each row's subgroup, None = missing) with
        patient-bootstrap intervals, the largest gap between subgroups and warnings for subgroups too small to read
        (see :mod:`medlens.subgroups` for the shape). None (the default): this task has no subgroup metrics."""
        return None

    def lower_is_better(self, metric: str) -> bool:
        """Whether a smaller value of ``metric`` is better (target checks read bounds the right way round)."""
        return metric == "loss"

    def metric_value(self, metrics: dict[str, Any], name: str) -> float | None:
        """A metric of this task's metrics dict by name (see :func:`lookup_metric`)."""
        return lookup_metric(metrics, name)

    def headline(self, metrics: dict[str, Any]) -> str:
        """One line for a split's metrics (``AUROC 0.960 (95% CI 0.910-0.990, n=624)``), or empty."""
        v = metrics.get(self.headline_metric)
        if v is None:
            return ""
        ci = (metrics.get("ci") or {}).get(self.headline_metric) or {}
        n = metrics.get("n")
        lo, hi = ci.get("low"), ci.get("high")
        interval = f" (95% CI {lo:.3f}-{hi:.3f}" + (f", n={n})" if n is not None else ")") if lo is not None and hi is not None else (
            f" (n={n})" if n is not None else "")
        return f"{self.headline_metric} {v:.3f}{interval}"

    def operating_point(self, manifest: Manifest) -> dict[str, Any] | None:
        """The deployed operating point as every surface shows it under the findings (``/v1/model``, the page, the
        per-image report): ``text`` (one line per finding naming the split and its n, each rate with its interval),
        ``calibration`` (one sentence on whether the number reads as a probability) and the task's own fields.
        None (the default): this task shows none."""
        return None

    # ------------------------------------------------------------------ results and their presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Manifest) -> list[Prediction]:
        raise NotImplementedError

    def findings(self, prediction: Prediction, manifest: Manifest) -> list[Finding]:
        raise NotImplementedError

    def presentation(self, manifest: Manifest) -> Presentation:
        raise NotImplementedError

    def summary_line(self, prediction: Prediction, manifest: Manifest) -> str:
        """One CLI line: the finding's own words, or ``label value (threshold t): decision`` per finding; an input the
        out-of-distribution gate flags is marked first."""
        parts = [f"[{ood_text(prediction)}]"] if prediction.ood else []
        for f in self.findings(prediction, manifest):
            if f.text:
                parts.append(f.text)
            elif f.positive is None:
                parts.append(f"{f.label}={f.value_text()}")
            else:
                parts.append(f"{f.label}{'' if f.value_kind == 'probability' else ' score'}={f.value_text()} "
                             f"({'argmax' if f.rule == 'argmax' else 'thr ' + f.threshold_text()}: {f.decision})")
        return "  ".join(parts)

    def outcome(self, prediction: Prediction, manifest: Manifest) -> str:
        """The model's output in one phrase (report summaries, index pages): the positive findings, or the findings'
        own words for a task without decisions."""
        found = self.findings(prediction, manifest)
        texts = [f.text for f in found if f.positive is None and f.text]
        return "; ".join(texts) if texts else (", ".join(f.label for f in found if f.positive) or "none")

    def record(self, prediction: Prediction, manifest: Manifest) -> dict[str, Any]:
        """The prediction as JSON-ready data (``predict --json``, ``/v1/predict``): the task's own fields and its
        findings; an input that failed has only ``source`` and ``error``."""
        if not prediction.ok:
            return {"source": prediction.source, "error": prediction.error}
        own = {k: v for k, v in asdict(prediction).items() if k not in ("source", "error")}
        if manifest.ood is None:
            own["ood_note"] = "this model has no out-of-distribution gate (trained without one): inputs unlike its training images are not flagged"
        elif prediction.ood:
            own["ood_note"] = ood_text(prediction)
        data = manifest_training_data(manifest)  # what the model was trained on, beside every record it makes
        own["training_data"] = {k: data[k] for k in ("summary", "generated", "banner")}
        return {"source": prediction.source, **own, "findings": [f.to_dict() for f in self.findings(prediction, manifest)]}

    def table_columns(self, manifest: Manifest) -> list[str]:
        """Columns of a predictions table (``predict --out preds.csv``) between ``source`` and ``error``."""
        raise NotImplementedError

    def table_row(self, prediction: Prediction, manifest: Manifest) -> list[str]:
        """One row of :meth:`table_columns` (only called for predictions that succeeded)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ explanations (optional)
    def explain_methods(self) -> list[str]:
        """Explanation methods this task offers (empty: none; ``explain`` and ``/v1/explain`` then refuse)."""
        return []

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Explanation]:
        raise ValueError(f"a {self.name} model has no explanation methods")

    def caption(self, method: str) -> str:
        """What an explanation map of ``method`` shows, in one sentence for reports."""
        return ""

    def target_layers(self, model: nn.Module) -> list[str]:
        """Layers a user may choose as explanation target (empty: the method has no layer choice)."""
        return []

    def check_method(self, method: str) -> str:
        """The method, or a ValueError listing this task's methods (or saying it has none)."""
        methods = self.explain_methods()
        if not methods:
            raise ValueError(f"a {self.name} model has no explanation methods")
        if method not in methods:
            raise ValueError(f"unknown explanation method {method!r} for this model; valid: {', '.join(methods)}")
        return method

    # ------------------------------------------------------------------ reports (optional: ``supports_report``)
    def report_part(self, inputs: ReportInputs) -> ReportPart:
        """The task's part of the evaluation report (only tasks with ``supports_report``)."""
        raise ValueError(f"the evaluation report does not cover {self.name} models; use medlens evaluate")
