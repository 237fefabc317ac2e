"""The :class:`Task` interface: everything that differs between tasks lives behind it.

A task owns its network spec, loss, LightningModule, outputs -> scores, operating point, metrics, decisions and
their presentation, explanation methods, ONNX head and manifest section. The pipeline (``medlens.train``), the
predictors, export, explain, evaluate, the reports, the CLI and the server ask the task object; none of them
tests a task name. Adding a task is one folder under ``medlens/tasks/`` plus one registry line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:  # no torch at import: ONNX Runtime predicts without it
    from torch import nn

#: the decision vocabulary shared by the page, the CLI and the reports
POSITIVE = "positive"
NEGATIVE = "negative"


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        source: the file name or a description of the input.
        probabilities: label -> probability (binary: both classes; multiclass: softmax; multilabel: sigmoid).
            Empty for tasks whose output is a score (anomaly).
        decisions: label -> bool at the manifest thresholds (binary: the positive class; multiclass: argmax).
        thresholds: label -> threshold used (binary/multilabel; anomaly: the score threshold).
        predicted: the labels decided positive (multiclass: the argmax class).
        error: why the input could not be predicted (then the other fields are empty).
        score: the anomaly score (anomaly task), compared with ``thresholds``.
    """

    source: str
    probabilities: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, bool] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)
    error: str | None = None
    score: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Finding:
    """One row of a result as every surface shows it (CLI line, report row, web page row).

    Attributes:
        label: the finding's name.
        value: the probability or score (None when unavailable).
        value_kind: ``probability`` (shown as a percentage) or ``score`` (shown as a number).
        threshold: the operating point the value is compared with (None for arg-max decisions).
        rule: ``threshold`` (value >= threshold) or ``argmax`` (the most probable class).
        positive: the decision.
    """

    label: str
    value: float | None
    value_kind: str
    threshold: float | None
    rule: str
    positive: bool

    @property
    def decision(self) -> str:
        return POSITIVE if self.positive else NEGATIVE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}

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
        value_name: column title of the value (``Probability``, ``Anomaly score``).
        value_kind: ``probability`` (0..1, shown as a percentage with a bar) or ``score`` (a number).
        explain_labels: labels a user can ask an explanation for.
        explain_methods: explanation methods offered; the first is the default.
        decision_words: the words for a positive and a negative decision.
        summary: one sentence on what the model outputs.
    """

    value_name: str
    value_kind: str
    explain_labels: list[str]
    explain_methods: list[str]
    decision_words: tuple[str, str] = (POSITIVE, NEGATIVE)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision_words"] = list(self.decision_words)
        return d


class PredictorLike(Protocol):
    """What tasks need from a predictor (``medlens.predict.Predictor`` satisfies it)."""

    manifest: Any
    batch_size: int

    @property
    def model(self) -> nn.Module: ...

    def transform(self, image: np.ndarray) -> np.ndarray: ...

    def predict(self, inputs: Any, metadata: Any = None, names: Any = None) -> list[Prediction]: ...

    def encode_metadata(self, metadata: Any, n: int) -> np.ndarray | None: ...


def changed_keys(cfg: Any, keys: Sequence[str]) -> list[str]:
    """The dotted ``keys`` (``section.key``) whose value in ``cfg`` differs from the schema default.

    Compared by value, not by presence, so a saved config (every key written out) is judged like the YAML it came
    from. Example: ``changed_keys(cfg, ["model.ae_depth"])`` is ``["model.ae_depth"]`` when the config sets it to 4.
    """
    out = []
    for key in keys:
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        info = type(node).model_fields[leaf]
        if getattr(node, leaf) != info.get_default(call_default_factory=True):
            out.append(key)
    return out


def refuse_keys(keys: Sequence[str], why: str) -> None:
    """One clear ``ValueError`` naming the keys that cannot act, and why (no-op when ``keys`` is empty)."""
    if keys:
        raise ValueError(f"{', '.join(keys)}: {why}; remove {'them' if len(keys) > 1 else 'it'}")


class Task:
    """Base class of a task; one instance per label kind it serves (``Task.kind``).

    Subclasses set :attr:`name`, :attr:`kinds` and implement the hooks below. Methods take explicit inputs
    (arrays, manifests, configs) so that the layers above (inference, training, serving) stay task-free.
    """

    name: ClassVar[str] = "base"
    #: label-space kinds this task serves (``LabelSpace.task``)
    kinds: ClassVar[tuple[str, ...]] = ()
    #: name of the ONNX output
    output_name: ClassVar[str] = "output"
    #: test-time augmentation (flips) makes sense for this task's outputs
    supports_tta: ClassVar[bool] = True
    #: ``medlens cv`` (k-fold) is supported
    supports_cv: ClassVar[bool] = True
    #: the evaluation report (bootstrap CIs, threshold sweep, calibration) is supported
    supports_report: ClassVar[bool] = True
    #: the network is a timm backbone (``model.backbone``, ``model.pretrained`` apply)
    uses_backbone: ClassVar[bool] = True
    #: headline metric key of this task's metrics
    headline_metric: ClassVar[str] = "auroc_macro"

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
        """Decisions compare each score with its own threshold (otherwise: arg-max)."""
        return True

    @property
    def ensemble_activation(self) -> str | None:
        """How an ensemble of this task's bundles averages its members (``softmax`` or ``sigmoid`` probabilities),
        None when bundles of this task cannot be ensembled."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r})"

    def uses_pretrained(self, cfg: Any) -> bool:
        """Whether ``model.pretrained`` is loaded into this config's network (default: when it has a timm backbone)."""
        return self.uses_backbone

    # ------------------------------------------------------------------ config and data
    def check_config(self, cfg: Any) -> None:
        """Refuse config keys that cannot act for this task (one clear message)."""

    @classmethod
    def read(cls, data_cfg: Any) -> Any:
        """Read the dataset a ``data`` config describes, labelled as this task needs."""
        raise NotImplementedError

    def prepare_table(self, table: Any, data_cfg: Any) -> Any:
        """The dataset as this task sees it (e.g. the normal-vs-abnormal view); default: unchanged."""
        return table

    def training_rows(self, table: Any, rows: np.ndarray) -> np.ndarray:
        """Rows of the training split the network learns from; default: all."""
        return np.asarray(rows, dtype=np.int64)

    def default_monitor(self) -> tuple[str, str]:
        """(validation metric without ``val/``, mode) followed by checkpoints by default."""
        return self.headline_metric, "max"

    # ------------------------------------------------------------------ network and training
    def architecture(self, cfg: Any, space: Any, meta_encoder: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def create_loss(self, cfg: Any, train_table: Any, preprocessing: Any) -> nn.Module:
        raise NotImplementedError

    def create_module(self, cfg: Any, model: nn.Module, space: Any, loss: nn.Module, preprocessing: Any, monitor: tuple[str, str]) -> Any:
        """The LightningModule that trains ``model`` (``monitor``: the validation metric and mode checkpoints follow)."""
        raise NotImplementedError

    def manifest_section(self, cfg: Any, preprocessing: Any, space: Any) -> dict[str, Any] | None:
        """This task's own manifest section written at training time (None: none)."""
        return None

    # ------------------------------------------------------------------ outputs
    def inference_head(self, model: nn.Module, manifest: Any) -> nn.Module:
        """``(image, metadata) -> raw outputs (N, K)``: the graph the torch predictor runs and ONNX exports."""
        raise NotImplementedError

    def num_outputs(self, manifest: Any) -> int:
        raise NotImplementedError

    def activation(self, raw: np.ndarray, manifest: Any, calibrated: bool = True) -> np.ndarray:
        """Raw outputs -> the scores decisions are made on (probabilities, or anomaly scores)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ operating point and metrics
    def fit_operating_point(self, cfg: Any, manifest: Any, raw_val: np.ndarray, val_table: Any, predictor: PredictorLike) -> None:
        """Fit thresholds / temperature / score scale on validation and store them in ``manifest``."""

    def metrics(self, scores: np.ndarray, targets: np.ndarray, manifest: Any, groups: Sequence | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def epoch_metrics(self, scores: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """Per-epoch validation metrics (no thresholds, no warnings)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decisions and presentation
    def to_predictions(self, scores: np.ndarray, sources: Sequence[str], manifest: Any) -> list[Prediction]:
        raise NotImplementedError

    def findings(self, prediction: Prediction, manifest: Any) -> list[Finding]:
        raise NotImplementedError

    def presentation(self, manifest: Any) -> Presentation:
        raise NotImplementedError

    def summary_line(self, prediction: Prediction, manifest: Any) -> str:
        """One CLI line: ``label value (threshold t): decision`` per finding, then the predicted labels."""
        parts = [f"{f.label}{'' if f.value_kind == 'probability' else ' score'}={f.value_text()} "
                 f"({'argmax' if f.rule == 'argmax' else 'thr ' + f.threshold_text()}: {f.decision})"
                 for f in self.findings(prediction, manifest)]
        return "  ".join(parts) + f"  predicted={'|'.join(prediction.predicted) or 'none'}"

    # ------------------------------------------------------------------ explanations
    def explain_methods(self) -> list[str]:
        return []

    def explain(self, predictor: PredictorLike, image: np.ndarray, source: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Any]:
        raise NotImplementedError

    def caption(self, method: str) -> str:
        """What an explanation map of ``method`` shows, in one sentence for reports."""
        return ""

    def target_layers(self, model: nn.Module) -> list[str]:
        """Layers a user may choose as explanation target (empty: the method has no layer choice)."""
        return []

    def check_method(self, method: str) -> str:
        """The method, or a ValueError listing this task's methods."""
        methods = self.explain_methods()
        if method not in methods:
            raise ValueError(f"unknown explanation method {method!r} for this model; valid: {', '.join(methods)}")
        return method
