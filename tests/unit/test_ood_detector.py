"""The out-of-distribution detector on stage features: one Gaussian per segment, standardised and averaged; stored
and checked like the penultimate gate; older records read as penultimate."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.ood import OodDetector, OodError, fit_detector, ood_features


def _feats(rng, n: int, shift_early: float = 0.0, shift_late: float = 0.0) -> np.ndarray:
    early = rng.normal(size=(n, 8)) + shift_early  # an "early stage": intensity-like
    late = rng.normal(size=(n, 24)) + shift_late  # the pooled vector
    return np.concatenate([early, late], axis=1)


def test_stage_segments_catch_a_shift_the_pooled_vector_alone_misses() -> None:
    rng = np.random.default_rng(0)
    tr, va, ind = _feats(rng, 400), _feats(rng, 200), _feats(rng, 200)
    odd = _feats(rng, 200, shift_early=3.0)  # unlike training only in the early stage
    stages = fit_detector(tr, va, "mahalanobis", segments=[8, 24])
    pen = fit_detector(tr[:, 8:], va[:, 8:], "mahalanobis")
    assert set(stages.arrays) == {"mean_0", "precision_0", "mean_1", "precision_1", "zscale"} and stages.segments == [8, 24]
    assert stages.flag(odd).mean() > 0.9 and stages.flag(ind).mean() < 0.15
    assert pen.flag(odd[:, 8:]).mean() < 0.15  # the pooled vector cannot see it
    assert 0.9 <= stages.record["val_pass_rate"] <= 1.0


def test_knn_on_segments_weighs_each_segment_and_widths_must_add_up() -> None:
    rng = np.random.default_rng(1)
    tr, va = _feats(rng, 300), _feats(rng, 100)
    det = fit_detector(tr, va, "knn", 5, segments=[8, 24])
    bank = det.arrays["bank"].astype(np.float32)
    assert bank.shape == (300, 32)  # each segment made unit length, then the whole: both weigh the same
    assert np.allclose(np.linalg.norm(bank[:, :8], axis=1), 2 ** -0.5, atol=2e-3)
    assert np.allclose(np.linalg.norm(bank[:, 8:], axis=1), 2 ** -0.5, atol=2e-3)
    with pytest.raises(ValueError, match="do not add up to the feature width 32"):
        fit_detector(tr, va, "mahalanobis", segments=[8, 20])
    with pytest.raises(OodError, match="width 24 for a gate fitted on width 32"):
        det.score(tr[:, 8:])


def test_stage_gate_round_trips_and_a_record_that_lies_about_segments_is_refused(tmp_path) -> None:
    rng = np.random.default_rng(2)
    tr, va = _feats(rng, 200), _feats(rng, 80)
    det = fit_detector(tr, va, "mahalanobis", segments=[8, 24])
    rec = det.save(tmp_path)
    assert rec["features"] == "stages" and rec["segments"] == [8, 24]
    json.dumps(rec)
    back = OodDetector.load(tmp_path, rec)
    x = _feats(rng, 10, shift_late=1.0)
    assert np.allclose(back.score(x), det.score(x))
    with pytest.raises(OodError, match="ood.segments"):
        OodDetector.load(tmp_path, {**rec, "segments": [16, 16]})  # shapes do not match the arrays
    with pytest.raises(OodError, match="ood.segments"):
        OodDetector.load(tmp_path, {**rec, "features": "penultimate"})  # one segment claimed for a staged gate
    with pytest.raises(OodError, match="ood.features"):
        OodDetector.load(tmp_path, {**rec, "features": "pixels"})


def test_which_features_a_bundle_reads() -> None:
    assert ood_features(SimpleNamespace(ood={"method": "mahalanobis"}, config={"ood": {"features": "stages"}})) == "penultimate"
    assert ood_features(SimpleNamespace(ood={"method": "knn", "features": "stages"}, config={})) == "stages"
    assert ood_features(SimpleNamespace(ood=None, config={"ood": {"features": "stages"}})) == "stages"  # training
    assert ood_features(SimpleNamespace(ood=None, config={})) == "penultimate"


def test_the_classifier_exposes_its_stages_in_one_pass() -> None:
    import torch

    from medlens.models.classifier import ImageClassifier

    m = ImageClassifier("resnet18", num_outputs=1, in_chans=1, image_size=64).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        fmap, feats = m.forward_with_stages(x)
        assert [c for _, c in m.stage_names()] == [64, 64, 128, 256] and m.ood_segments() == [128, 128, 256, 512, 512]
        assert feats.shape == (2, 1536) and torch.allclose(feats[:, -512:], m.pool(fmap))
        stem = m.backbone.act1(m.backbone.bn1(m.backbone.conv1(x)))  # the first segment: the stem's channel means, then spreads
        assert torch.allclose(feats[:, :64], stem.mean(dim=(2, 3)), atol=1e-5) and torch.allclose(feats[:, 64:128], stem.std(dim=(2, 3), correction=0), atol=1e-5)
        tiny = ImageClassifier("resnet18", num_outputs=1, in_chans=1, image_size=16).eval()  # stages down to 1x1 maps
        assert torch.isfinite(tiny.forward_with_stages(torch.randn(2, 1, 16, 16))[1]).all()
        assert torch.allclose(fmap, m.forward_features(x))  # the hooks leave the pass unchanged and are removed
        assert not any(mod._forward_hooks for mod in m.modules())
