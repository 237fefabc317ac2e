"""Anomaly task pieces: normal/abnormal relabelling, threshold at a false-positive rate, losses, metrics,
the Predictor's anomaly branch and the error-map explanation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medlens.bundle import Bundle, Manifest
from medlens.data.dataset import Batch
from medlens.data.labels import LabelError, LabelSpace
from medlens.data.samples import SampleTable
from medlens.data.transforms import resolve_preprocessing
from medlens.engine.module import OptimSettings
from medlens.inference import Predictor, write_predictions_csv
from medlens.models.autoencoder import ReversedAutoencoder, ScoreSpec, anomaly_scores
from medlens.tasks.anomaly import normal_rows
from medlens.tasks.anomaly.data import anomaly_label_space, normal_flags, to_anomaly_table
from medlens.tasks.anomaly.loss import create_reconstruction_loss
from medlens.tasks.anomaly.metrics import anomaly_metrics
from medlens.tasks.anomaly.module import ReconstructionModule as ReconstructionTask
from medlens.tasks.anomaly.threshold import fit_threshold
from medlens.tasks.classification.metrics import average_precision, binary_auroc


# ------------------------------------------------------------------------------------------ relabelling
def _table(names, task, targets, n_img=None):
    n = len(targets)
    return SampleTable(LabelSpace(tuple(names), task), [f"r{i}" for i in range(n)], [f"{i}.png" for i in range(n)], np.asarray(targets, np.float32), source="src.csv")


def test_binary_source_with_normal_second_is_reordered():
    t = _table(["malignant", "normal, benign"], "binary", [[1, 0], [0, 1], [np.nan, np.nan]])
    a = to_anomaly_table(t, "normal, benign")
    assert a.label_space == LabelSpace(("normal, benign", "malignant"), "anomaly")
    assert a.targets[:2].tolist() == [[0, 1], [1, 0]]
    assert np.isnan(a.targets[2]).all()  # unknown stays unknown, never silently normal
    assert t.label_space.task == "binary"  # the source table is untouched


def test_multiclass_source_names_everything_else_abnormal():
    t = _table(["normal", "covid", "pneumonia"], "multiclass", [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    a = to_anomaly_table(t, "normal")
    assert a.label_space.names == ("normal", "abnormal")
    assert a.targets[:, 0].tolist() == [1, 0, 0]


def test_multilabel_no_finding_means_all_findings_known_negative():
    t = _table(["Effusion", "Mass"], "multilabel", [[0, 0], [1, 0], [0, np.nan], [np.nan, 1]])
    flags = normal_flags(t, "No Finding")
    assert flags[:2].tolist() == [1.0, 0.0]
    assert np.isnan(flags[2])  # one finding unknown: cannot call it normal
    assert flags[3] == 0.0  # one finding present: abnormal whatever the rest
    assert anomaly_label_space(t.label_space, "No Finding").names == ("No Finding", "abnormal")


def test_missing_or_unknown_normal_label_is_a_clear_error():
    t = _table(["normal", "pneumonia"], "binary", [[1, 0]])
    with pytest.raises(LabelError, match="normal_label is not set"):
        to_anomaly_table(t, None)
    with pytest.raises(LabelError, match="'Normal' is not one of the labels"):
        to_anomaly_table(t, "Normal")


def test_read_dataset_gives_the_anomaly_view(pneumonia_npz):
    from medlens.config import config_from_dict
    from medlens.tasks import read_table

    t = read_table(config_from_dict({"data": {"kind": "medmnist", "path": str(pneumonia_npz), "task": "anomaly", "download": False},
                                     "task_options": {"normal_label": "normal"}}))
    assert t.label_space == LabelSpace(("normal", "pneumonia"), "anomaly")
    raw = np.load(pneumonia_npz)
    assert int(t.targets[t.splits == "train", 0].sum()) == int((raw["train_labels"] == 0).sum()) == 1214


# ------------------------------------------------------------------------------------------ threshold
@settings(max_examples=60, deadline=None)
@given(n=st.integers(5, 400), fpr=st.floats(0.005, 0.5), seed=st.integers(0, 10_000))
def test_threshold_reproduces_the_false_positive_rate_on_the_normals(n, fpr, seed):
    scores = np.random.default_rng(seed).normal(size=n)  # distinct with probability 1
    thr, got = fit_threshold(scores, fpr)
    flagged = float(np.mean(scores >= thr))
    assert got == flagged
    assert flagged == np.floor(fpr * n + 1e-9) / n  # exactly the largest achievable rate <= fpr
    assert flagged <= fpr + 1e-12


def test_threshold_with_ties_never_exceeds_the_rate():
    scores = np.array([1.0] * 10 + [0.0] * 90)
    thr, got = fit_threshold(scores, 0.05)  # 5 allowed, but 10 tie at the top
    assert got == 0.0 and np.mean(scores >= thr) == 0.0
    thr, got = fit_threshold(scores, 0.10)
    assert got == pytest.approx(0.10)


def test_threshold_needs_scores():
    with pytest.raises(ValueError, match="no normal validation scores"):
        fit_threshold(np.array([]), 0.05)


# ------------------------------------------------------------------------------------------ losses
def test_losses_registry():
    x = torch.rand(2, 1, 16, 16)
    for name in ("auto", "mse", "mse_ssim"):
        assert float(create_reconstruction_loss(name)(x, x)) == pytest.approx(0.0, abs=1e-5)
    noisy = x + 0.3 * torch.randn_like(x)
    assert float(create_reconstruction_loss("mse_ssim")(noisy, x)) > float(create_reconstruction_loss("mse")(noisy, x)) > 0
    with pytest.raises(KeyError, match="valid: mse, mse_ssim"):
        create_reconstruction_loss("bce")


# ------------------------------------------------------------------------------------------ task module
def _task():
    model = ReversedAutoencoder(1, 16, depth=2, width=4, latent_dim=4)
    space = LabelSpace(("normal", "pneumonia"), "anomaly")
    return ReconstructionTask(model=model, label_space=space, loss=create_reconstruction_loss("mse"), optim=OptimSettings(), monitor_metric="loss")


def _batch(targets):
    t = torch.tensor(targets, dtype=torch.float32)
    return Batch(torch.randn(len(t), 1, 16, 16), t, ~torch.isnan(t), torch.arange(len(t)))


def test_the_anomaly_task_builds_the_reconstruction_module(tmp_path):
    from medlens.tasks import get_task

    assert get_task("anomaly").name == "anomaly"
    assert isinstance(_task(), ReconstructionTask)


def test_a_non_normal_row_in_a_training_batch_is_refused():
    task = _task()
    ReconstructionTask.check_normal(_batch([[1, 0], [1, 0]]))
    for bad in ([[1, 0], [0, 1]], [[1, 0], [np.nan, np.nan]]):
        with pytest.raises(RuntimeError, match="non-normal samples reached the training loader"):
            task.training_step(_batch(bad), 0)


def test_normal_rows_excludes_abnormal_and_unknown():
    t = _table(["normal", "pneumonia"], "anomaly", [[1, 0], [0, 1], [np.nan, np.nan], [1, 0]])
    assert normal_rows(t, np.arange(4)).tolist() == [0, 3]
    assert normal_rows(t, np.array([1, 2])).tolist() == []


# ------------------------------------------------------------------------------------------ metrics
def _manifest(threshold=0.5, spec=None):
    return Manifest(
        architecture={"type": "reversed_ae", "in_chans": 1, "image_size": 16, "depth": 2, "width": 4, "latent_dim": 4},
        label_space=LabelSpace(("normal", "pneumonia"), "anomaly"), preprocessing=resolve_preprocessing(16, 1),
        thresholds=[threshold], task_section={"normal_label": "normal", "threshold": threshold, "fpr": 0.05, **(spec or ScoreSpec(mean=(0.5,), std=(0.5,))).to_dict()},
    )


def test_anomaly_metrics_reuse_the_metrics_module_with_cis():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    scores = rng.normal(size=200) + 1.0 * y
    targets = np.stack([~y, y], axis=1).astype(np.float32)
    m = anomaly_metrics(scores[:, None], targets, _manifest(0.8), n_boot=200)
    assert m["task"] == "anomaly"
    assert m["auroc"] == pytest.approx(binary_auroc(scores, y))
    assert m["average_precision"] == pytest.approx(average_precision(scores, y))
    pred = scores >= 0.8
    assert m["f1"] == pytest.approx(2 * (pred & y).sum() / (2 * (pred & y).sum() + (pred & ~y).sum() + (~pred & y).sum()))
    assert m["fpr"] == pytest.approx(float(pred[~y].mean()))
    assert m["threshold"] == 0.8 and m["fpr_target"] == 0.05
    ci = m["ci"]["headline"]["auroc_macro"]
    assert ci["low"] < m["auroc"] < ci["high"] and ci["n_valid"] == 200
    assert "ece" not in m  # raw scores are not probabilities: no calibration metrics


# ------------------------------------------------------------------------------------------ predictor
def _bundle(spec=None):
    torch.manual_seed(0)
    model = ReversedAutoencoder(1, 16, depth=2, width=4, latent_dim=4).eval()
    return Bundle(model, _manifest(0.0, spec))


@pytest.mark.parametrize("kind", ["mse", "ssim"])
def test_predictor_outputs_the_anomaly_score_and_decides_at_the_threshold(kind, tmp_path):
    spec = ScoreSpec(error_map=kind, method="percentile", percentile=95.0, mean=(0.5,), std=(0.5,))
    b = _bundle(spec)
    p = Predictor(b, batch_size=3)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (20, 24), dtype=np.uint8) for _ in range(5)]
    out = p.predict_arrays(imgs)
    assert out.shape == (5, 1)
    x = torch.from_numpy(np.stack([p.transform(im) for im in imgs]))
    assert np.allclose(out[:, 0], anomaly_scores(b.model, x, spec)[0].numpy(), atol=1e-6)
    b.manifest.thresholds = [float(np.median(out))]
    preds = p.predict(imgs, names=[f"i{i}" for i in range(5)])
    for pr, s in zip(preds, out[:, 0], strict=True):
        assert pr.score == pytest.approx(float(s))
        assert pr.flagged == (s >= b.manifest.thresholds[0])
        assert pr.label == ("pneumonia" if s >= b.manifest.thresholds[0] else "normal")
        assert not hasattr(pr, "probabilities")  # a score is not a probability
    path = write_predictions_csv(preds, p.label_names, tmp_path / "p.csv", b.manifest)
    rows = list(csv.DictReader(open(path)))
    assert [float(r["anomaly_score"]) for r in rows] == pytest.approx(out[:, 0].tolist(), rel=1e-5)


def test_error_map_explanation_has_the_original_image_size():
    from medlens.tasks.anomaly.explain import error_map_explanation

    b = _bundle()
    b.manifest.task_section["pixel_scale"] = 0.5
    img = np.random.default_rng(0).integers(0, 256, (37, 51), dtype=np.uint8)  # not the model's 16 px
    e = error_map_explanation(Predictor(b), img)
    assert e.heatmap.shape == (37, 51)
    assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1
    assert e.label == "pneumonia" and e.method == "error_map"
    assert e.overlay_png[:4] == b"\x89PNG"
    assert e.probability == pytest.approx(float(Predictor(b).predict_arrays([img])[0, 0]), rel=1e-5)


def test_explain_routes_anomaly_bundles_to_the_error_map():
    import medlens.interpret as explain_mod  # an import error here is a bug, not a reason to skip

    b = _bundle()
    img = np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8)
    exps = explain_mod.explain(Predictor(b), img, method="error_map")
    assert len(exps) == 1 and exps[0].heatmap.shape == (30, 30) and exps[0].method == "error_map"
