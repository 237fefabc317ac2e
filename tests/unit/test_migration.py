"""Configs and bundles written before tasks owned their sections keep loading: the one migration, in config.py
(``LEGACY_TASK_KEYS``) and bundle.py (``migrate_manifest``)."""

from __future__ import annotations

import pytest

from medlens.bundle import Manifest
from medlens.config import ConfigError, config_from_dict
from medlens.tasks import get_task, task_of


def _old_manifest(task: str, names: list[str], **extra) -> dict:
    return {"format": "medlens-bundle", "format_version": 1, "task": task, "label_names": names,
            "architecture": {"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 28},
            "preprocessing": {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]}, "thresholds": [0.3], **extra}


def test_an_old_anomaly_manifest_loads_with_its_section_moved() -> None:
    d = _old_manifest("anomaly", ["normal", "pneumonia"], anomaly={"threshold": 0.3, "error_map": "ssim", "pixel_scale": 0.1})
    d["architecture"] = {"type": "unet_ae", "in_chans": 1, "image_size": 28, "depth": 2, "width": 8, "latent_dim": 16}
    m = Manifest.from_dict(d, "old/manifest.json")
    assert m.task_section == {"threshold": 0.3, "error_map": "ssim", "pixel_scale": 0.1}
    assert m.label_space.single_output and m.label_space.num_outputs == 1
    assert task_of(m).name == "anomaly"
    again = Manifest.from_dict(m.to_dict())  # written the new way, read back the same
    assert again.task_section == m.task_section and "anomaly" not in m.to_dict() and m.to_dict()["label_layout"]["single_output"]


def test_an_old_classifier_manifest_and_its_saved_config_load() -> None:
    cfg = {"data": {"kind": "synthetic", "task": "binary", "normal_label": None},
           "model": {"backbone": "resnet18", "autoencoder": "unet", "ae_depth": 3},
           "optim": {"loss": "focal", "focal_gamma": 1.5, "lr": 0.01}, "trainer": {"threshold_method": "youden", "calibrate": False}}
    m = Manifest.from_dict(_old_manifest("binary", ["normal", "pneumonia"], config=cfg))
    assert m.label_space.task == "binary" and m.task_section is None
    c = config_from_dict(m.config)
    assert c.task_options["loss"] == "focal" and c.task_options["threshold_method"] == "youden" and c.optim.lr == 0.01
    # a saved config holds every key of the old schema, the detector's at their defaults: those asked for nothing
    assert "autoencoder" not in c.task_options and "normal_label" not in c.task_options
    assert get_task("binary").options(c).focal_gamma == 1.5
    get_task("binary").validate_config(c)
    # a detector key changed from its old default in a classifier's config moves, and the classifier refuses it by name
    with pytest.raises(ConfigError, match="task_options.ae_depth: unknown key for task 'classification'"):
        get_task("binary").options(config_from_dict({**cfg, "model": {"ae_depth": 4}}))


def test_old_and_new_spelling_of_one_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="optim.loss and task_options.loss are the same option"):
        config_from_dict({"data": {"kind": "synthetic"}, "optim": {"loss": "bce"}, "task_options": {"loss": "focal"}})
