"""The torch-free name lists of the tasks agree with the registries they describe."""

from __future__ import annotations

from medlens.tasks import get_task, list_kinds, list_tasks
from medlens.tasks.anomaly import RECON_LOSS_NAMES
from medlens.tasks.anomaly.loss import RECON_LOSSES
from medlens.tasks.classification.cam import CAM_METHODS
from medlens.tasks.classification.cam_methods import CAPTIONS, list_methods


def test_name_lists_match_the_registries() -> None:
    assert sorted(RECON_LOSS_NAMES) == sorted(RECON_LOSSES.names())
    assert sorted(list_methods()) == sorted(CAM_METHODS.names()) == sorted(CAPTIONS)
    assert list_methods()[0] == "gradcam"  # the default method


def test_every_kind_has_a_task_with_presentation_and_methods() -> None:
    assert list_tasks() == ["anomaly", "classification"]
    for kind in list_kinds():
        task = get_task(kind)
        assert task.kind == kind and task.explain_methods()
        assert all(task.caption(m) for m in task.explain_methods())
