"""Typed bodies of the 200 responses (``GET /v1/model``, ``POST /v1/predict``), so the OpenAPI schema says what a
client gets.

The shared fields are typed; what a task adds (its own prediction fields, its manifest section, its operating point)
is allowed through as given (``extra="allow"``), so a new task needs nothing here. ``/v1/predict`` returns its body
directly (no second serialisation pass per request): the model documents it, the route's tests check it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """Typed where the core knows the field; a task's own fields pass through."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class TrainingData(_Open):
    """What the model was trained on (``medlens.provenance``); ``recorded: false`` for bundles older than the record."""

    recorded: bool
    generated: bool | None = Field(None, description="true: trained on images medlens generated (the offline demo)")
    banner: str | None = Field(None, description="shown with every decision of a model trained on generated images")
    summary: str = Field(..., description="one line: date, source kind and name, n per split, population")
    source_kind: str | None = None
    source_name: str | None = None
    n: dict[str, int] | None = None
    per_class: dict[str, dict[str, int]] | None = None
    trained: str | None = None
    population: str | None = None
    intended_use: str | None = None


class TrainingDataBrief(_Open):
    """The training-data line beside each prediction."""

    summary: str
    generated: bool | None = None
    banner: str | None = None


class PresentationInfo(_Open):
    """How the task's results are shown (the page renders from it)."""

    value_name: str
    value_kind: str = Field(..., description="probability (0..1, shown as a percentage), score or value")
    explain_labels: list[str]
    explain_methods: list[str]
    decision_words: list[str]
    summary: str


class InputSpec(_Open):
    """What ``/v1/predict`` accepts."""

    formats: list[str]
    max_upload_bytes: int
    max_pixels: int
    max_files: int
    preprocessing: dict[str, Any]


class ModelInfo(_Open):
    """``GET /v1/model``: the model as a client needs it, nothing about the host."""

    format: str
    format_version: int
    created: str | None = None
    task: str
    label_names: list[str]
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    thresholds: list[float]
    temperature: float | list[float]
    task_section: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    weights_source: str | None = None
    metrics: dict[str, Any]
    intended_use: str | None = None
    versions: dict[str, str]
    training_data: TrainingData
    input: InputSpec
    backend: str
    explain_methods: list[str]
    presentation: PresentationInfo
    tta: str | bool
    target_layers: list[str]
    metadata_fields: dict[str, Any]
    operating_point: dict[str, Any] | None = Field(
        None, description="the task's deployed operating point (classifiers: rates with Wilson and, with patient ids, patient-bootstrap intervals on a named split); "
                          "null when the task shows none")


class FindingInfo(_Open):
    """One row of a result as every surface shows it."""

    label: str
    value: float | None
    value_kind: str
    threshold: float | None
    rule: str = Field(..., description="threshold, argmax or none")
    positive: bool | None
    decision: str | None
    text: str = ""
    interval: list[float] | None = None


class PredictionRecord(_Open):
    """One input's record: ``source`` and ``error`` for every task; the task's own fields and ``findings`` when it
    was predicted."""

    source: str
    error: str | None = None
    findings: list[FindingInfo] | None = None
    training_data: TrainingDataBrief | None = None
    ood: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_note: str | None = None


class PredictResponse(BaseModel):
    """``POST /v1/predict``: one record per uploaded file, in order."""

    model: str
    task: str
    predictions: list[PredictionRecord]
