"""The feature anomaly detector (``model.detector: patchcore``) through the one pipeline: blob images detected,
bundle round trip, ONNX equal to torch, error maps, and the options it refuses. Tiny CPU runs (28 px, resnet10t).

The backbone file is written with ``write_backbone`` from a randomly initialised network: these tests check the
detector's mechanics (memory, distances, bundle, export), not how good self-supervised features are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.bundle import load_bundle
from medlens.config import config_from_dict
from medlens.models.classifier import build_backbone
from medlens.models.patchcore import PatchCoreDetector, greedy_coreset, standardize_images
from medlens.pretrain import write_backbone
from medlens.training import train


def _weights(tmp_path: Path, backbone: str = "resnet10t", size: int = 28) -> Path:
    torch.manual_seed(0)
    net, red, _ = build_backbone(backbone, 1, size)
    return write_backbone(net.state_dict(), tmp_path / f"bb_{backbone}_{size}", {"backbone": backbone, "in_chans": 1, "stem_reduction": red})


def _raw(tmp_path: Path, weights: Path | None, **sections) -> dict:
    raw = {
        "seed": 0,
        "data": {"kind": "synthetic", "num_samples": 240, "image_size": 28, "channels": 1, "task": "anomaly", "normal_label": "negative",
                 "batch_size": 32, "augment": "none"},
        "model": {"backbone": "resnet10t", "detector": "patchcore", "pretrained": str(weights) if weights else False, "memory_size": 512,
                  "anomaly_score": "percentile", "score_percentile": 100, "anomaly_fpr": 0.1},
        "trainer": {"max_epochs": 1, "progress_bar": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "pc", "overwrite": True},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return raw


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patchcore")
    return train(config_from_dict(_raw(tmp, _weights(tmp))))


def test_blob_images_are_detected(trained):
    assert trained.metrics["test"]["auroc"] > 0.9
    assert trained.data_summary["train_rows_left_out"] > 0  # abnormal training rows never reached the memory
    b = load_bundle(trained.bundle_dir)
    assert b.manifest.architecture["type"] == "patchcore" and b.manifest.task_section["error_map"] == "distance"
    assert 0 < b.model.memory.shape[0] <= 512


def test_bundle_round_trip_and_onnx_scores_equal_torch(trained, tmp_path):
    from medlens.export import export_onnx
    from medlens.inference import Predictor
    from medlens.inference.onnx import OnnxPredictor

    torch_pred = Predictor.from_bundle(trained.bundle_dir)
    b = load_bundle(trained.bundle_dir)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(b.model(x), torch_pred.model(x))
    export_onnx(trained.bundle_dir, tmp_path / "onnx")
    onnx_pred = OnnxPredictor.from_bundle(tmp_path / "onnx")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(6)]
    a = torch_pred.predict_arrays(imgs)
    o = onnx_pred.predict_arrays(imgs)
    np.testing.assert_allclose(o, a, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_image_norm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patchcore_image_norm")
    return train(config_from_dict(_raw(tmp, _weights(tmp), model={"input_norm": "image"})))


def test_image_norm_bundle_detects_and_exports(trained_image_norm, tmp_path):
    from medlens.export import export_onnx
    from medlens.inference import Predictor
    from medlens.inference.onnx import OnnxPredictor

    assert trained_image_norm.metrics["test"]["auroc"] > 0.9
    b = load_bundle(trained_image_norm.bundle_dir)
    assert b.manifest.architecture["input_norm"] == "image" and b.model.input_norm == "image"
    export_onnx(trained_image_norm.bundle_dir, tmp_path / "onnx")
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(6)]
    a = Predictor.from_bundle(trained_image_norm.bundle_dir).predict_arrays(imgs)
    o = OnnxPredictor.from_bundle(tmp_path / "onnx").predict_arrays(imgs)
    np.testing.assert_allclose(o, a, atol=1e-4, rtol=1e-4)  # the per-image standardisation is in the graph
    # a darker, lower-contrast copy of each image (another scanner) gets the same score
    dim = [(0.5 * im + 20).astype(np.uint8) for im in imgs]
    np.testing.assert_allclose(Predictor.from_bundle(trained_image_norm.bundle_dir).predict_arrays(dim), a, rtol=0.05, atol=0.05)


def test_image_norm_makes_distances_indifferent_to_brightness_and_contrast():
    x = torch.rand(4, 1, 28, 28)
    shifted = 0.4 * x + 0.3  # the same images, dimmer and brighter: a cohort or scanner shift
    assert torch.allclose(standardize_images(shifted), standardize_images(x), atol=1e-4)
    other = torch.rand(4, 1, 28, 28)  # new images of the same kind
    dist, new = {}, {}
    for norm in ("dataset", "image"):
        torch.manual_seed(0)
        m = PatchCoreDetector("resnet10t", 1, 28, memory_size=10_000, input_norm=norm)
        m.fill_memory(m.patch_features(x))
        dist[norm], new[norm] = float(m.patch_distances(shifted).mean()), float(m.patch_distances(other).mean())
    assert dist["image"] < 0.05 * new["image"]  # the shifted copies are still their own nearest neighbours
    assert dist["dataset"] > new["dataset"]  # without it they look more anomalous than new images do
    with pytest.raises(ValueError, match="task_options.input_norm"):
        PatchCoreDetector("resnet10t", 1, 28, input_norm="patch")


def test_error_map_marks_the_blob(trained):
    from medlens.data.readers.synthetic import make_synthetic
    from medlens.inference import Predictor
    from medlens.tasks.anomaly.explain import error_map_array

    imgs, y = make_synthetic(40, 28, 2, "binary", seed=7)
    img = imgs[np.flatnonzero(y == 1)[0]]
    emap, score = error_map_array(Predictor.from_bundle(trained.bundle_dir), img)
    assert emap.shape == (28, 28) and score > 0
    cy, cx = np.unravel_index(np.argmax(emap), emap.shape)
    by, bx = np.unravel_index(np.argmax(img.astype(float)), img.shape)
    assert abs(cy - by) <= 6 and abs(cx - bx) <= 6  # the hottest patch is at the blob


def test_distance_is_zero_on_memorised_patches_and_coreset_bounds_memory():
    torch.manual_seed(0)
    m = PatchCoreDetector("resnet10t", 1, 28, memory_size=10_000)
    x = torch.randn(3, 1, 28, 28)
    m.fill_memory(m.patch_features(x))
    assert float(m.patch_distances(x).max()) < 1e-2  # every patch is its own nearest neighbour
    assert float(m.patch_distances(torch.randn(2, 1, 28, 28)).mean()) > 0.1
    small = PatchCoreDetector("resnet10t", 1, 28, memory_size=50)
    small.fill_memory(small.patch_features(x))
    assert small.memory.shape[0] == 50  # memory_size
    deep = PatchCoreDetector("resnet10t", 1, 28, patch_layers=[3], memory_size=50)  # patch_layers: coarser patches, fewer channels
    assert deep.patch_features(x).shape[-1] == 7 and deep.feature_dim < small.feature_dim
    idx = greedy_coreset(torch.cat([torch.zeros(100, 2), torch.ones(1, 2) * 10]), 2)
    assert 100 in idx.tolist()  # the farthest point is kept: an outlier patch is not thinned away


def test_patchcore_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="set model.pretrained"):
        train(config_from_dict(_raw(tmp_path, None)))
    w = _weights(tmp_path)
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        train(config_from_dict(_raw(tmp_path, w, trainer={"max_epochs": 3})))
    with pytest.raises(ValueError, match="task_options.ae_depth"):
        train(config_from_dict(_raw(tmp_path, w, model={"ae_depth": 4})))
    with pytest.raises(ValueError, match="task_options.memory_size"):  # an autoencoder refuses the detector's keys
        train(config_from_dict(_raw(tmp_path, None, model={"detector": "autoencoder"})))
    with pytest.raises(ValueError, match="task_options.input_norm"):
        train(config_from_dict(_raw(tmp_path, None, model={"detector": "autoencoder", "memory_size": 4096, "input_norm": "image"})))
    torch.manual_seed(0)
    net, red, _ = build_backbone("resnet10t", 1, 28)
    std_views = write_backbone(net.state_dict(), tmp_path / "std_views", {"backbone": "resnet10t", "in_chans": 1, "stem_reduction": red, "input_norm": "image"})
    with pytest.raises(ValueError, match="pretrained with task_options.input_norm: image, this model uses dataset"):
        train(config_from_dict(_raw(tmp_path, std_views)))
    other = _weights(tmp_path, "resnet18")
    with pytest.raises(ValueError, match="different network"):
        train(config_from_dict(_raw(tmp_path, other)))


def test_coreset_candidates_bound_the_patches_the_memory_is_chosen_from(tmp_path, trained, caplog):
    """task_options.coreset_candidates: the fill keeps a uniform sample of at most that many training patches, so the
    memory (memory_size 512 here) can hold no more than them; the default keeps every patch of this small set."""
    from medlens.bundle import load_bundle

    full = load_bundle(trained.bundle_dir).model.memory
    assert full.shape[0] == 512
    w = _weights(tmp_path)
    with caplog.at_level("INFO", logger="medlens"):
        r = train(config_from_dict(_raw(tmp_path, w, task_options={"coreset_candidates": 200})))
    assert load_bundle(r.bundle_dir).model.memory.shape[0] == 200  # every candidate kept: fewer than memory_size
    assert any("of" in m and "training patches sampled for the coreset" in m for m in caplog.messages)


def test_patch_position_compares_a_patch_with_normal_patches_at_its_place():
    """task_options.patch_position: a patch that looks like a normal patch from elsewhere is far from the memory
    once places count; with 0 (classic PatchCore) it is not."""
    torch.manual_seed(0)
    grid = torch.zeros(1, 2, 4, 4)
    grid[:, 0, :2] = 1.0  # normal images: feature A in the top half, feature B in the bottom half
    grid[:, 1, 2:] = 1.0
    swapped = grid.flip(2)  # the same two features, each in the other half

    class Fixed(PatchCoreDetector):
        def patch_features(self, x):
            return x

    for weight, far in ((0.0, False), (1.0, True)):
        m = Fixed("resnet10t", 1, 28, memory_size=64, patch_position=weight)
        m.feature_dim, m.memory_dim = 2, 2 + (2 if weight else 0)
        m.fill_memory(grid.repeat(3, 1, 1, 1))
        d_same, d_swapped = m.patch_distances(grid).max().item(), m.patch_distances(swapped).max().item()
        assert d_same < 1e-3
        assert (d_swapped > 0.3) == far, (weight, d_swapped)  # 0.35: half the image away, at w x spread 0.71
    assert float(m.pos_scale) == pytest.approx(0.5**0.5)  # w x the features' spread (RMS distance to their mean)


def test_patch_position_acts_through_the_config_and_exports(tmp_path):
    from medlens.export import export_onnx
    from medlens.inference import Predictor
    from medlens.inference.onnx import OnnxPredictor

    r = train(config_from_dict(_raw(tmp_path, _weights(tmp_path), task_options={"patch_position": 2.0})))
    b = load_bundle(r.bundle_dir)
    assert b.manifest.architecture["patch_position"] == 2.0 and b.model.memory.shape[1] == b.model.feature_dim + 2
    assert float(b.model.pos_scale) > 0 and r.metrics["test"]["auroc"] > 0.9
    export_onnx(r.bundle_dir, tmp_path / "onnx")
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(4)]
    np.testing.assert_allclose(OnnxPredictor.from_bundle(tmp_path / "onnx").predict_arrays(imgs),
                               Predictor.from_bundle(r.bundle_dir).predict_arrays(imgs), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="patch_position"):
        train(config_from_dict({**_raw(tmp_path, None), "model": {"backbone": "resnet10t"},
                                "task_options": {"patch_position": 1.0}}))


def test_random_features_are_an_explicit_choice(tmp_path):
    """task_options.random_features: the seeded random backbone instead of model.pretrained (refused without it, and
    beside model.pretrained); two runs with one seed give the same memory."""
    raw = _raw(tmp_path, None, task_options={"random_features": True, "patch_position": 1.0})
    a = load_bundle(train(config_from_dict(raw)).bundle_dir).model
    raw["output"]["name"] = "pc2"
    b = load_bundle(train(config_from_dict(raw)).bundle_dir).model
    assert a.memory.shape[0] > 0 and torch.equal(a.memory, b.memory)
    with pytest.raises(ValueError, match="remove model.pretrained"):
        train(config_from_dict(_raw(tmp_path, _weights(tmp_path), task_options={"random_features": True})))
