"""Calibration: ECE and reliability bins against scikit-learn's calibration_curve, Brier score, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from medlens.tasks.classification.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    reliability_bins,
)


def _reference_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    """Plain loop: bins (lo, hi], the first including 0."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        sel = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() * abs(hit[sel].mean() - conf[sel].mean())
    return total / len(conf)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(5, 200), st.integers(1, 20), st.booleans())
def test_binary_reliability_matches_sklearn(seed, n, n_bins, on_edges):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    if on_edges:  # probabilities exactly on bin edges go to the lower bin, as in scikit-learn
        p = np.round(p * n_bins) / n_bins
    y = (rng.random(n) < p).astype(float)
    targets = np.stack([1 - y, y], axis=1)
    bins = reliability_bins(p[:, None], targets, "binary", n_bins)
    assert sum(b["count"] for b in bins) == n
    full = [b for b in bins if b["count"]]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose([b["accuracy"] for b in full], prob_true, atol=1e-9)
    np.testing.assert_allclose([b["confidence"] for b in full], prob_pred, atol=1e-9)
    ece = expected_calibration_error(p[:, None], targets, "binary", n_bins)
    assert ece == pytest.approx(_reference_ece(p, y, n_bins), abs=1e-12)
    assert brier_score(p[:, None], targets, "binary") == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_multilabel_pools_known_entries_and_reports_per_label():
    rng = np.random.default_rng(1)
    p = rng.random((80, 3))
    y = (rng.random((80, 3)) < p).astype(float)
    y[:20, 1] = np.nan
    known = ~np.isnan(y)
    s = calibration_summary(p, y, "multilabel", ["a", "b", "c"], n_bins=10)
    assert s["n"] == known.sum()
    assert s["ece"] == pytest.approx(_reference_ece(p[known], y[known], 10), abs=1e-12)
    assert s["brier"] == pytest.approx(brier_score_loss(y[known], p[known]), abs=1e-12)
    kb = known[:, 1]
    assert s["per_label"]["b"] == pytest.approx(_reference_ece(p[kb, 1], y[kb, 1], 10), abs=1e-12)
    assert s["mce"] >= s["ece"]


def test_multiclass_is_top_label_calibration():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(100, 4)) * 2
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, size=100)
    t = np.eye(4)[y]
    t[:5] = np.nan
    conf, hit = p[5:].max(axis=1), (p[5:].argmax(axis=1) == y[5:]).astype(float)
    assert expected_calibration_error(p, t, "multiclass", 10) == pytest.approx(_reference_ece(conf, hit, 10), abs=1e-12)
    assert brier_score(p, t, "multiclass") == pytest.approx(brier_score_loss(y[5:], p[5:], labels=[0, 1, 2, 3]), abs=1e-12)


def test_perfectly_calibrated_scores_have_small_ece():
    rng = np.random.default_rng(3)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(float)
    assert expected_calibration_error(p[:, None], np.stack([1 - y, y], 1), "binary") < 0.01
    over = np.clip(p + 0.3 * (p > 0.5) - 0.3 * (p <= 0.5), 0, 1)  # overconfident version of the same scores
    assert expected_calibration_error(over[:, None], np.stack([1 - y, y], 1), "binary") > 0.1


def _nll(z, y):
    p = 1 / (1 + np.exp(-z))
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(4)
    true_logit = rng.normal(0, 2, size=20_000)
    y = (rng.random(len(true_logit)) < 1 / (1 + np.exp(-true_logit))).astype(float)
    targets = np.stack([1 - y, y], 1)
    t = fit_temperature(3.0 * true_logit[:, None], targets, "binary")  # a model 3x overconfident
    assert t == pytest.approx(3.0, rel=0.05)
    assert _nll(3.0 * true_logit / t, y) < _nll(3.0 * true_logit, y)
    assert fit_temperature(true_logit[:, None], targets, "binary") == pytest.approx(1.0, abs=0.05)


def test_temperature_multiclass_and_masked_multilabel():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(5000, 3)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(0.5 * z, np.eye(3)[y], "multiclass") == pytest.approx(0.5, rel=0.1)
    zl = rng.normal(0, 2, size=(5000, 2))
    yl = (rng.random(zl.shape) < 1 / (1 + np.exp(-zl))).astype(float)
    yl[:2500, 1] = np.nan  # unknown entries are ignored
    assert fit_temperature(2 * zl, yl, "multilabel") == pytest.approx(2.0, rel=0.1)


def test_predictor_applies_temperature_only_when_calibrated():
    from medlens.bundle import Bundle, Manifest
    from medlens.data.labels import LabelSpace
    from medlens.data.transforms import Preprocessing
    from medlens.inference import Predictor

    torch = pytest.importorskip("torch")
    m = Manifest(architecture={}, label_space=LabelSpace(("n", "p"), "binary"),
                 preprocessing=Preprocessing(image_size=8, channels=1, mean=[0.5], std=[0.5]), temperature=2.0)
    b = Bundle(torch.nn.Identity(), m)
    z = np.array([[2.0], [-1.0]])
    cal = Predictor(b).activation(z)
    raw = Predictor(b, calibrated=False).activation(z)
    np.testing.assert_allclose(cal, 1 / (1 + np.exp(-z / 2)))
    np.testing.assert_allclose(raw, 1 / (1 + np.exp(-z)))


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_classification_metrics_reports_the_same_ece_and_brier(task):
    from medlens.tasks.classification.metrics import classification_metrics

    rng = np.random.default_rng(6)
    n = 120
    if task == "binary":
        p = rng.random((n, 1))
        y = (rng.random(n) < p[:, 0]).astype(float)
        t, names = np.stack([1 - y, y], 1), ["n", "p"]
    elif task == "multiclass":
        z = rng.normal(size=(n, 3))
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        t, names = np.eye(3)[rng.integers(0, 3, n)], ["a", "b", "c"]
    else:
        p = rng.random((n, 3))
        t, names = (rng.random((n, 3)) < p).astype(float), ["a", "b", "c"]
    t[:7] = np.nan
    m = classification_metrics(p, t, task, names, warn=False)
    assert m["ece"] == pytest.approx(expected_calibration_error(p, t, task), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score(p, t, task), abs=1e-12)


# ------------------------------------------------------------------------------------------ per-label temperatures
def _ml_operating_point(logits: np.ndarray, targets: np.ndarray, names=("a", "b")):
    from types import SimpleNamespace

    from medlens.bundle import Manifest
    from medlens.data.labels import LabelSpace
    from medlens.data.transforms import resolve_preprocessing
    from medlens.tasks import get_task

    task = get_task("multilabel")
    manifest = Manifest(architecture={}, label_space=LabelSpace(tuple(names), "multilabel"), preprocessing=resolve_preprocessing(32, 1))
    cfg = SimpleNamespace(task_options={"calibrate": True, "threshold_method": "fixed", "fixed_threshold": 0.5})
    op = task.fit_operating_point(cfg, manifest, logits, SimpleNamespace(targets=targets), None)
    return task, manifest, op


def _true_logits(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 2))
    y = (rng.random((n, 2)) < 1 / (1 + np.exp(-z))).astype(float)
    return z, y


def test_multilabel_fit_stores_one_temperature_per_label_and_activation_divides_columnwise():
    z, y = _true_logits()
    y[:500, 1] = np.nan  # unknown entries are left out of that label's fit
    raw = np.stack([3.0 * z[:, 0], 0.5 * z[:, 1]], axis=1)  # over- and under-confident by known factors
    task, manifest, op = _ml_operating_point(raw, y)
    t = manifest.temperature
    assert isinstance(t, list) and len(t) == 2
    assert abs(t[0] - 3.0) < 0.4 and abs(t[1] - 0.5) < 0.08
    rec = op["calibration"]
    assert rec["per_label"] and rec["temperature"] == t and rec["labels"] == ["a", "b"]
    assert rec["range"] == [0.05, 20.0] and rec["at_bound"] == [] and rec["bound_hit"] is False
    probs = task.activation(raw, manifest)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-raw / np.array(t))), rtol=1e-5)
    np.testing.assert_allclose(task.activation(raw, manifest, calibrated=False), 1 / (1 + np.exp(-raw)), rtol=1e-5)
    # binary keeps one scalar
    assert isinstance(fit_temperatures(raw[:, :1], np.stack([1 - y[:, 0], y[:, 0]], 1), "binary")["temperature"], float)


def test_bound_hit_warns_naming_the_label_and_is_recorded(caplog):
    z, y = _true_logits(seed=1)
    raw = np.stack([z[:, 0], 100.0 * z[:, 1]], axis=1)  # label b's optimum is T = 100, beyond the range
    with caplog.at_level("WARNING", logger="medlens.calibration"):
        _, manifest, op = _ml_operating_point(raw, y, names=("Effusion", "Mass"))
    assert manifest.temperature[1] == pytest.approx(20.0, rel=1e-3) and abs(manifest.temperature[0] - 1.0) < 0.2
    assert op["calibration"]["at_bound"] == ["Mass"] and op["calibration"]["bound_hit"] is True
    lines = [r.getMessage() for r in caplog.records if "bound" in r.getMessage()]
    assert len(lines) == 1 and "'Mass'" in lines[0] and "1/20..20" in lines[0]


def test_manifest_temperature_list_round_trips_and_bad_values_are_one_line(tmp_path):
    from medlens.bundle import BundleError, Manifest, load_bundle, read_temperature
    from tests.unit._bundles import random_bundle

    b = random_bundle(tmp_path / "b", backbone="test_resnet", task="multilabel", names=("a", "b", "c"), temperature=[1.5, 0.5, 2.0])
    assert load_bundle(b).manifest.temperature == [1.5, 0.5, 2.0]
    d = load_bundle(b).manifest.to_dict()
    assert Manifest.from_dict({**d, "temperature": 1.7}).temperature == 1.7  # old bundles: a float
    assert Manifest.from_dict({**d, "temperature": None}).temperature == 1.0
    with pytest.raises(BundleError, match="temperature.*positive"):
        Manifest.from_dict({**d, "temperature": [1.0, -2.0, 1.0]}, source="m.json")
    assert read_temperature(["2", 3]) == [2.0, 3.0]
