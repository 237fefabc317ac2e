"""Ensemble bundles (``medlens cv --ensemble``): the mean of the members' calibrated probabilities, in one bundle
that predicts, exports to ONNX with the same outputs, explains through every member and refuses odd members."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medlens.bundle import BundleError, read_manifest
from medlens.config import config_from_dict
from medlens.ensemble import build_ensemble
from medlens.inference import Predictor
from tests.unit._bundles import random_bundle

SIZE = 32


def _imgs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8) for _ in range(n)]


def _cfg(tmp_path: Path, **trainer):
    return config_from_dict({"data": {"kind": "folder", "root": str(tmp_path), "image_size": SIZE, "channels": 1},
                             "trainer": {"threshold_method": "youden", **trainer}})


def _members(tmp_path: Path, task: str, names: tuple[str, ...], temps: list, orientations: list[int] | None = None) -> list[Path]:
    out = []
    for i, t in enumerate(temps):
        extra = {"orientation": orientations[i]} if orientations else {}
        out.append(random_bundle(tmp_path / f"m{i}", backbone="test_resnet", image_size=SIZE, channels=1, task=task, names=names,
                                 temperature=t, seed=i, extra=extra))
    return out


def _oof(n_out: int, n: int = 40, seed: int = 0, task: str = "binary") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y[:, None] + 0.7 * rng.random((n, n_out)), 0.01, 0.99).astype(np.float32)
    if task == "binary":
        return p[:, :1], np.stack([1 - y, y], 1).astype(np.float32)
    if task == "multiclass":
        p = p / p.sum(1, keepdims=True)
        return p, np.eye(n_out, dtype=np.float32)[rng.integers(0, n_out, n)]
    return p, (rng.random((n, n_out)) < 0.5).astype(np.float32)


@pytest.mark.parametrize("task,names,temps,orient", [
    ("binary", ("normal", "pneumonia"), [0.5, 1.0, 2.0], [1, -1, 1]),
    ("multiclass", ("a", "b", "c"), [0.7, 1.3], None),
    ("multilabel", ("x", "y", "z"), [[0.5, 1.0, 2.0], [1.5, 0.8, 1.0]], None),
], ids=["binary", "multiclass", "multilabel"])
def test_ensemble_predicts_the_mean_of_its_members_calibrated_probabilities(tmp_path, task, names, temps, orient):
    members = _members(tmp_path, task, names, temps, orient)
    n_out = 1 if task == "binary" else len(names)
    oof_p, oof_y = _oof(n_out, task=task)
    ens = build_ensemble(members, tmp_path / "ens", _cfg(tmp_path), oof_p, oof_y)
    imgs = _imgs(12)
    want = np.mean([Predictor.from_bundle(m).predict_arrays(imgs) for m in members], axis=0)
    got = Predictor.from_bundle(ens).predict_arrays(imgs)
    assert got.shape == want.shape == (12, n_out)
    assert np.abs(got - want).max() < 1e-5  # each member's temperature and orientation act inside the ensemble
    single = Predictor.from_bundle(members[0]).predict_arrays(imgs)
    assert np.abs(got - single).max() > 1e-3  # not just the first member
    m = read_manifest(ens)
    assert m.architecture["type"] == "ensemble" and len(m.architecture["members"]) == len(temps)
    assert m.temperature == 1.0 and m.architecture["backbone"] == "test_resnet"
    assert m.extra["ensemble"]["member_sha256"] == [read_manifest(p).weights_sha256 for p in members]


def test_ensemble_thresholds_follow_the_task_rule_on_out_of_fold_probabilities(tmp_path):
    from medlens.tasks.classification.metrics import tune_thresholds

    members = _members(tmp_path, "binary", ("normal", "pneumonia"), [1.0, 1.0])
    oof_p, oof_y = _oof(1, n=60)
    ens = build_ensemble(members, tmp_path / "ens", _cfg(tmp_path), oof_p, oof_y)
    assert read_manifest(ens).thresholds == pytest.approx(tune_thresholds(oof_p, oof_y, "binary", "youden"), abs=1e-5)
    fixed = build_ensemble(members, tmp_path / "ens2", _cfg(tmp_path, threshold_method="fixed", fixed_threshold=0.3), oof_p, oof_y)
    assert read_manifest(fixed).thresholds == [0.3]


def test_ensemble_exports_to_onnx_with_the_same_outputs(tmp_path):
    from medlens.export import export_onnx

    members = _members(tmp_path, "multiclass", ("a", "b", "c"), [0.7, 1.3])
    ens = build_ensemble(members, tmp_path / "ens", _cfg(tmp_path), *_oof(3, task="multiclass"))
    export_onnx(ens)
    imgs = _imgs(16, seed=3)
    a = Predictor.from_bundle(ens).predict_arrays(imgs)
    b = Predictor.from_bundle(ens, backend="onnx").predict_arrays(imgs)
    assert np.abs(a - b).max() < 1e-4


def test_ensemble_maps_come_from_every_member(tmp_path):
    from medlens.interpret import explain

    members = _members(tmp_path, "binary", ("normal", "pneumonia"), [1.0, 1.0, 1.0])
    oof = _oof(1)
    ens = build_ensemble(members, tmp_path / "ens", _cfg(tmp_path), *oof)
    other = build_ensemble([members[0], members[1], members[1]], tmp_path / "ens2", _cfg(tmp_path), *oof)
    img = _imgs(1, seed=5)[0]
    e = explain(Predictor.from_bundle(ens), img, method="gradcam")[0]
    assert e.target_layer == "members.*.backbone.layer3"  # 32 px: layer3 is 8x8 (the deepest of >= 7x7), layer4 4x4
    assert e.heatmap.shape == img.shape and np.isfinite(e.heatmap).all()
    e2 = explain(Predictor.from_bundle(other), img, method="gradcam")[0]
    assert np.abs(e.heatmap - e2.heatmap).max() > 1e-3  # the third member's weights change the map
    named = explain(Predictor.from_bundle(ens), img, method="gradcam", target_layer="backbone.layer4")[0]
    assert named.target_layer == "members.*.backbone.layer4"


def test_odd_members_are_refused_with_the_file_named(tmp_path):
    a = random_bundle(tmp_path / "a", backbone="test_resnet", image_size=SIZE, channels=1)
    b = random_bundle(tmp_path / "b", backbone="test_resnet", image_size=SIZE, channels=1, names=("neg", "pos"))
    c = random_bundle(tmp_path / "c", backbone="test_resnet", image_size=SIZE + 8, channels=1)
    oof = _oof(1)
    with pytest.raises(BundleError, match=r"b: labels .* differ"):
        build_ensemble([a, b], tmp_path / "x", _cfg(tmp_path), *oof)
    with pytest.raises(BundleError, match=r"c: preprocessing differs"):
        build_ensemble([a, c], tmp_path / "x", _cfg(tmp_path), *oof)
    ens = build_ensemble([a, a], tmp_path / "ens", _cfg(tmp_path), *oof)
    with pytest.raises(BundleError, match="is an ensemble already"):
        build_ensemble([a, ens], tmp_path / "x", _cfg(tmp_path), *oof)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_an_ensemble_of_every_row_is_not_scored_on_its_own_data(tmp_path):
    from medlens.evaluation import evaluate

    a = random_bundle(tmp_path / "a", backbone="test_resnet", image_size=SIZE, channels=1)
    ens = build_ensemble([a, a], tmp_path / "ens", _cfg(tmp_path), *_oof(1), provenance={"held_out": False})
    with pytest.raises(ValueError, match="trained on every row of its data"):
        evaluate(ens, split="test")
    doc = json.loads((ens / "manifest.json").read_text())
    assert doc["extra"]["ensemble"]["held_out"] is False


@pytest.mark.parametrize("arch,message", [
    ({"members": [], "activation": "sigmoid", "num_outputs": 1}, "1 to 64 members"),
    ({"members": [{"type": "classifier"}] * 65, "activation": "sigmoid", "num_outputs": 1}, "1 to 64 members"),
    ({"members": [{"type": "ensemble", "members": []}], "activation": "sigmoid", "num_outputs": 1}, r"members\[0\]: a member is a classifier"),
    ({"members": [{"type": "patchcore"}], "activation": "sigmoid", "num_outputs": 1}, r"members\[0\]"),
    ({"members": [{"type": "classifier", "backbone": "test_resnet", "num_outputs": 1}], "activation": "relu", "num_outputs": 1}, "softmax or sigmoid"),
], ids=["empty", "too-many", "nested", "detector", "activation"])
def test_a_hostile_ensemble_manifest_is_refused_before_building_networks(tmp_path, arch, message):
    """A tampered manifest cannot make the loader build thousands of networks or recurse."""
    import shutil

    from medlens.bundle import load_bundle

    a = random_bundle(tmp_path / "a", backbone="test_resnet", image_size=SIZE, channels=1)
    ens = build_ensemble([a, a], tmp_path / "ens", _cfg(tmp_path), *_oof(1))
    bad = tmp_path / "bad"
    shutil.copytree(ens, bad)
    doc = json.loads((bad / "manifest.json").read_text())
    doc["architecture"] = {"type": "ensemble", **arch}
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises((ValueError, BundleError), match=message):
        load_bundle(bad)
