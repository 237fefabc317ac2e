"""Plots are real PNGs with ink in them, also for undefined labels; no pyplot state is touched."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medlens import plots
from medlens.tasks.classification import plots as cplots
from medlens.tasks.classification.metrics import classification_metrics


def _img(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


@pytest.fixture(scope="module")
def ml():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(float)
    y[:, 2] = 0.0  # no positives: the panel says undefined instead of drawing a curve
    y[:5, 0] = np.nan
    p = np.clip(0.4 * np.nan_to_num(y) + 0.6 * rng.random((60, 3)), 0, 1)
    return p, y, ["a", "b", "c"]


def test_curves_and_matrices(ml):
    p, y, names = ml
    m = classification_metrics(p, y, "multilabel", names, warn=False)
    for png in (cplots.roc_png(p, y, "multilabel", names), cplots.pr_png(p, y, "multilabel", names),
                cplots.confusion_png(m, names), cplots.reliability_png(p, y, "multilabel", uncalibrated_probs=p ** 2)):
        a = _img(png)
        assert a.shape[0] > 150 and a.shape[1] > 150
        assert (a < 128).mean() > 0.005  # lines and text were drawn


def test_multiclass_confusion_and_training_curves():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    t = np.eye(3)[rng.integers(0, 3, 40)]
    m = classification_metrics(p, t, "multiclass", ["x", "y", "z"], warn=False)
    assert _img(cplots.confusion_png(m, ["x", "y", "z"])).size > 0
    hist = [{"epoch": e, "step": 10 * e, "val/loss": 1 / (e + 1), "train/loss": 1.2 / (e + 1), "val/auroc_macro": 0.6 + 0.05 * e} for e in range(3)]
    assert _img(plots.training_curves_png(hist)).shape[1] > 300
    assert plots.training_curves_png([]) is None
    assert _img(plots.folds_png([m, m, m], ["auroc_macro", "accuracy"])).size > 0


def test_save_png_is_atomic(tmp_path, ml):
    p, y, names = ml
    out = plots.save_png(cplots.roc_png(p[:, :1], np.stack([1 - np.nan_to_num(y[:, 0]), np.nan_to_num(y[:, 0])], 1), "binary", ["n", "a"]), tmp_path / "sub" / "roc.png")
    assert out.is_file() and [f.name for f in out.parent.iterdir()] == ["roc.png"]


def test_confusion_panels_carry_class_names():
    p = np.array([[0.9], [0.2], [0.7], [0.1]])
    t = np.array([[0, 1], [1, 0], [1, 0], [0, 1]], float)
    m = classification_metrics(p, t, "binary", ["normal", "pneumonia"], [0.5], warn=False)
    (panel,) = cplots.confusion_panels(m, ["normal", "pneumonia"])
    assert panel["labels"] == ["normal", "pneumonia"] and panel["matrix"] == [[1, 1], [1, 1]]
    ml = classification_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [1, 1]], float), "multilabel", ["Mass", "Edema"], warn=False)
    assert [x["labels"] for x in cplots.confusion_panels(ml, ["Mass", "Edema"])] == [["no Mass", "Mass"], ["no Edema", "Edema"]]
    assert _img(cplots.confusion_png(m, ["normal", "pneumonia"])).size > 0


def test_banded_curves_draw_more_ink(ml):
    from medlens.tasks.classification.uncertainty import curve_bands

    p, y, names = ml
    bands = curve_bands(p, y, "multilabel", names, [0.5, 0.5, 0.5], n_boot=50)
    for fn in (cplots.roc_png, cplots.pr_png):
        plain, banded = _img(fn(p, y, "multilabel", names)), _img(fn(p, y, "multilabel", names, bands=bands))
        assert plain.shape == banded.shape and (banded < 250).mean() > (plain < 250).mean()  # band and marker drawn
