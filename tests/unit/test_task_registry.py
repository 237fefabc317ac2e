"""The torch-free name lists of the tasks agree with the registries they describe; every task publishes its rules."""

from __future__ import annotations

import typing

import pytest

from medlens.tasks import Task, get_task, list_kinds, list_tasks
from medlens.tasks.anomaly.loss import RECON_LOSSES
from medlens.tasks.anomaly.options import AnomalyOptions
from medlens.tasks.classification.cam import CAM_METHODS
from medlens.tasks.classification.cam_methods import CAPTIONS, list_methods


def test_name_lists_match_the_registries() -> None:
    losses = typing.get_args(AnomalyOptions.model_fields["loss"].annotation)
    assert sorted(x for x in losses if x != "auto") == sorted(RECON_LOSSES.names())
    assert sorted(list_methods()) == sorted(CAM_METHODS.names()) == sorted(CAPTIONS)
    assert list_methods()[0] == "gradcam"  # the default method


def test_every_kind_has_a_task_with_presentation_and_methods() -> None:
    assert list_tasks() == ["anomaly", "classification", "regression"]
    for kind in list_kinds():
        task = get_task(kind)
        assert task.kind == kind and task.explain_methods()
        assert all(task.caption(m) for m in task.explain_methods())


def test_capabilities_are_absent_unless_a_task_declares_them() -> None:
    for cap in ("supports_tta", "supports_cv", "supports_report", "supports_thresholds", "supports_mixing", "supports_ema",
                "supports_sampler", "supports_metadata", "uses_backbone"):
        assert getattr(Task, cap) is False, cap
    assert Task.explain_methods(Task.__new__(Task)) == []


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: anomaly, binary, multiclass, multilabel, regression"):
        get_task("regresion")
