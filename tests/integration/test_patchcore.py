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
from medlens.models.patchcore import PatchCoreDetector, greedy_coreset
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
    assert b.manifest.architecture["type"] == "patchcore" and b.manifest.anomaly["error_map"] == "distance"
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
    with pytest.raises(ValueError, match="model.ae_depth"):
        train(config_from_dict(_raw(tmp_path, w, model={"ae_depth": 4})))
    with pytest.raises(ValueError, match="model.memory_size"):  # an autoencoder refuses the detector's keys
        train(config_from_dict(_raw(tmp_path, None, model={"detector": "autoencoder"})))
    other = _weights(tmp_path, "resnet18")
    with pytest.raises(ValueError, match="different network"):
        train(config_from_dict(_raw(tmp_path, other)))
