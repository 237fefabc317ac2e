"""TTA presets average the right views; orientation_check flips an inverted binary model."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.bundle import load_bundle
from medlens.data.labels import LabelSpace
from medlens.data.samples import SampleTable
from medlens.inference import Predictor
from medlens.inference.base import resolve_tta
from medlens.tasks.classification.metrics import binary_auroc
from tests.unit._bundles import random_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("tta") / "b", image_size=32)


def _imgs(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)]


def test_d4_averages_the_eight_dihedral_views(bundle_dir) -> None:
    imgs = _imgs()
    plain = Predictor.from_bundle(bundle_dir, tta="none")
    views = []
    for k in range(4):
        for flip in (False, True):
            v = [np.rot90(im, k) for im in imgs]
            views.append(plain.predict_arrays([np.ascontiguousarray(x[:, ::-1] if flip else x) for x in v], logits=True))
    manual = np.mean(views, axis=0)
    assert len({round(float(v[0, 0]), 5) for v in views}) > 1  # the views really differ for this network
    got = Predictor.from_bundle(bundle_dir, tta="d4").predict_arrays(imgs, logits=True)
    np.testing.assert_allclose(got, manual, rtol=1e-4, atol=1e-5)
    flips = Predictor.from_bundle(bundle_dir, tta="flips").predict_arrays(imgs, logits=True)
    np.testing.assert_allclose(flips, np.mean([views[0], views[1], np.asarray(plain.predict_arrays([np.ascontiguousarray(x[::-1]) for x in imgs], logits=True))], axis=0), rtol=1e-4, atol=1e-5)


def test_true_still_means_hflip_and_unknown_preset_is_refused(bundle_dir) -> None:
    imgs = _imgs(3)
    a = Predictor.from_bundle(bundle_dir, tta=True).predict_arrays(imgs)
    b = Predictor.from_bundle(bundle_dir, tta="hflip").predict_arrays(imgs)
    np.testing.assert_array_equal(a, b)
    assert resolve_tta(False) == "none"
    with pytest.raises(ValueError, match="valid: none, hflip, flips, d4"):
        Predictor.from_bundle(bundle_dir, tta="d8")


def test_orientation_check_flips_an_inverted_binary_model(tmp_path, caplog) -> None:
    bundle = load_bundle(random_bundle(tmp_path / "inv", image_size=32))
    imgs = _imgs(40, seed=1)
    pred = Predictor(bundle)
    logits = pred.predict_arrays(imgs, logits=True)[:, 0]
    y = (logits < np.median(logits)).astype(np.float32)  # labels deliberately opposite to the score
    table = SampleTable(LabelSpace(("normal", "abnormal"), "binary"), [str(i) for i in range(40)], np.stack(imgs),
                        np.stack([1 - y, y], axis=1))
    assert binary_auroc(pred.predict_table(table)[:, 0], y) < 0.5
    cfg = SimpleNamespace(task_options={"orientation_check": True, "calibrate": True, "threshold_method": "f1", "fixed_threshold": 0.5})
    with caplog.at_level(logging.WARNING, logger="medlens.train"):
        pred.task.fit_operating_point(cfg, bundle.manifest, pred.predict_table(table, logits=True), table, pred)
    assert bundle.manifest.extra["orientation"] == -1
    assert any("ORIENTATION FLIPPED" in r.getMessage() for r in caplog.records)
    assert binary_auroc(pred.predict_table(table)[:, 0], y) > 0.5  # the same predictor now scores the right way
    # the sign travels with the bundle
    from medlens.bundle import save_bundle

    save_bundle(bundle.model, bundle.manifest, tmp_path / "flipped")
    again = Predictor.from_bundle(tmp_path / "flipped")
    assert binary_auroc(again.predict_table(table)[:, 0], y) > 0.5
    # off by default: nothing is flipped
    b2 = load_bundle(random_bundle(tmp_path / "keep", image_size=32))
    cfg.task_options["orientation_check"] = False
    b2p = Predictor(b2)
    b2p.task.fit_operating_point(cfg, b2.manifest, b2p.predict_table(table, logits=True), table, b2p)
    assert "orientation" not in b2.manifest.extra


def test_config_tta_none_is_off_and_presets_are_kept() -> None:
    from medlens.config import ConfigError, config_from_dict

    mk = lambda v: config_from_dict({"data": {"kind": "synthetic"}, "trainer": {"tta": v}}).trainer.tta  # noqa: E731
    assert mk("none") is False and mk("d4") == "d4" and mk(True) is True
    with pytest.raises(ConfigError, match="trainer.tta"):
        mk("d8")
