"""The regression task end to end: the living proof that a task is one folder plus one registry line.

A tiny dataset whose value is the image's brightness trains, evaluates (MAE, intervals), predicts a number with
an interval, explains (Grad-CAM of the value), exports to ONNX with identical outputs, is served on the API, and
refuses what cannot act for it (``--threshold``), each through the public functions and the real server.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict

N = 72
SIZE = 24


def _write_dataset(root: Path) -> Path:
    """``labels.csv``: path, age (20 + 60 x brightness), pid (two images per patient), with 3 bad rows."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(N):
        b = rng.uniform(0, 1)
        img = np.clip(rng.normal(40 + 180 * b, 12, (SIZE, SIZE)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "age": f"{20 + 60 * b:.1f}", "pid": f"p{i // 2}"})
    rows += [{"path": "img/0.png", "age": "", "pid": "x1"}, {"path": "img/1.png", "age": "n/a", "pid": "x2"},
             {"path": "img/2.png", "age": "400", "pid": "x3"}]
    path = root / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "age", "pid"])
        w.writeheader()
        w.writerows(rows)
    return path


def _raw(root: Path, csv_path: Path, **task_options) -> dict:
    return {
        "seed": 0,
        "data": {"kind": "csv", "path": str(csv_path), "image_column": "path", "label_column": "age", "group_column": "pid",
                 "task": "regression", "image_size": SIZE, "channels": 1, "batch_size": 16, "augment": "none",
                 "split": {"method": "group", "val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}},
        "model": {"backbone": "resnet10t", "small_input": True},
        "optim": {"lr": 3e-3},
        "trainer": {"max_epochs": 6, "progress_bar": False, "channels_last": False, "precision": "32"},
        "output": {"dir": str(root / "runs"), "name": "age", "overwrite": True},
        "task_options": {"max_value": 150, **task_options},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    import medlens

    root = tmp_path_factory.mktemp("regression")
    csv_path = _write_dataset(root)
    result = medlens.train(config_from_dict(_raw(root, csv_path)))
    return root, result


def test_values_are_read_as_numbers_and_bad_rows_dropped_with_a_count(tmp_path: Path, caplog) -> None:
    from medlens.tasks import read_table

    csv_path = _write_dataset(tmp_path)
    with caplog.at_level("WARNING"):
        table = read_table(config_from_dict(_raw(tmp_path, csv_path)))
    assert table.label_space.names == ("age",) and table.label_space.task == "regression" and table.label_space.values
    assert len(table) == N  # the blank, the non-number and the out-of-range row are gone, never read as 0
    assert np.nanmin(table.targets) >= 20 and not np.isnan(table.targets).any()
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "3 rows without a numeric 'age' dropped (1 blank, 1 not a number" in msg and "1 outside the range" in msg
    counts = table.label_counts()["age"]
    assert counts["n"] == N and "positive" not in counts  # values are not counted as positives


def test_trains_evaluates_and_predicts_a_value_with_an_interval(trained) -> None:
    import medlens
    from medlens.bundle import load_bundle

    root, result = trained
    test = result.metrics["test"]
    assert {"mae", "rmse", "r2", "pearson_r", "bias", "ci", "interval_coverage"} <= set(test)
    assert test["pearson_r"] > 0.5 and test["ci"]["mae"]["low"] <= test["mae"] <= test["ci"]["mae"]["high"]
    m = load_bundle(result.bundle_dir).manifest
    section = m.task_section
    assert section["interval_level"] == 0.9 and section["interval_halfwidth"] > 0 and section["target_sd"] > 0
    assert m.label_space.values and m.to_dict()["label_layout"]["values"]  # the bundle records that targets are numbers
    ev = medlens.evaluate(result.bundle_dir, split="test", record=False)
    assert ev.metrics["mae"] == pytest.approx(test["mae"], rel=1e-5)
    img = root / "img" / "5.png"
    pred = medlens.predict(result.bundle_dir, [str(img)])[0]
    assert pred.low < pred.value < pred.high and pred.level == 0.9
    from medlens.tasks import task_of

    task = task_of(m)
    line = task.summary_line(pred, m)
    assert line.startswith("predicted age ") and "90 % interval" in line and "negative" not in line and "positive" not in line
    assert task.findings(pred, m)[0].decision == ""  # no positive/negative decision for a number
    out = root / "preds.csv"
    medlens.predict(result.bundle_dir, [str(img), str(root / "missing.png")], out=out)
    rows = list(csv.DictReader(out.open()))
    assert float(rows[0]["predicted_age"]) == pytest.approx(pred.value, rel=1e-5) and rows[1]["error"]


def test_report_has_intervals_calibration_in_the_large_and_bland_altman(trained, tmp_path: Path) -> None:
    from medlens.report import build_report

    _, result = trained
    r = build_report(result.run_dir, out=tmp_path / "rep", n_boot=50)
    html = r.html.read_text()
    assert "Bland-Altman" in html and "Calibration in the large" in html and "Prediction interval" in html
    assert r.metrics["metrics"]["mae"] == pytest.approx(result.metrics["test"]["mae"], rel=1e-4)
    assert r.metrics["ci"]["headline"]["mae"]["low"] is not None and "age values" in html


def test_threshold_is_refused_in_one_line(trained) -> None:
    import medlens

    _, result = trained
    for kw in ({"threshold": 0.5}, {"thresholds_from": "val"}):
        with pytest.raises(ValueError) as e:
            medlens.evaluate(result.bundle_dir, split="test", record=False, **kw)
        assert "no thresholded decision" in str(e.value) and "\n" not in str(e.value)


def test_gradcam_of_the_value_and_onnx_parity(trained, tmp_path: Path) -> None:
    import medlens
    from medlens.inference import Predictor
    from medlens.inference.onnx import OnnxPredictor

    root, result = trained
    predictor = Predictor.from_bundle(result.bundle_dir)
    img = np.asarray(Image.open(root / "img" / "7.png"))
    exps = medlens.explain(predictor, img, method="gradcam")
    assert len(exps) == 1 and exps[0].label == "age" and exps[0].heatmap.shape == img.shape
    medlens.export_onnx(result.bundle_dir, tmp_path / "onnx")
    imgs = [np.asarray(Image.open(root / "img" / f"{i}.png")) for i in range(8)]
    a = np.array([p.value for p in predictor.predict(imgs)])
    b = np.array([p.value for p in OnnxPredictor.from_bundle(tmp_path / "onnx").predict(imgs)])
    assert np.allclose(a, b, atol=1e-3 * np.abs(a).max())


def test_served_on_the_api_with_its_own_presentation(trained) -> None:
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app

    root, result = trained
    client = TestClient(create_app(result.bundle_dir))
    model = client.get("/v1/model").json()
    assert model["presentation"]["value_kind"] == "value" and model["presentation"]["decision_words"] == []
    with open(root / "img" / "3.png", "rb") as f:
        r = client.post("/v1/predict", files={"files": ("3.png", f, "image/png")})
    assert r.status_code == 200, r.text
    finding = r.json()["predictions"][0]["findings"][0]
    assert finding["text"].startswith("predicted age ") and finding["decision"] is None and len(finding["interval"]) == 2
    with open(root / "img" / "3.png", "rb") as f:
        r = client.post("/v1/report", files={"file": ("3.png", f, "image/png")})
    assert r.status_code == 200 and "predicted age" in r.text


def test_regression_options_act(tmp_path: Path) -> None:
    """loss, huber_delta, standardize, interval_level, min_value and max_value each change what they should."""
    import torch

    from medlens.data.transforms import preprocessing_from_config
    from medlens.tasks import get_task, read_table
    from medlens.tasks.regression.metrics import interval_halfwidth

    csv_path = _write_dataset(tmp_path)
    task = get_task("regression")

    def loss_value(**opts) -> float:
        cfg = config_from_dict(_raw(tmp_path, csv_path, **opts))
        t = read_table(cfg)
        loss = task.create_loss(cfg, t, preprocessing_from_config(cfg.data))
        out, y = torch.tensor([[0.0], [3.0]]), torch.tensor([[50.0], [20.0]])
        return float(loss(out, loss.standardize(y), torch.ones_like(y, dtype=torch.bool)))

    assert len({loss_value(loss="mse"), loss_value(loss="l1"), loss_value(loss="huber")}) == 3
    assert loss_value(loss="huber", huber_delta=0.5) != loss_value(loss="huber", huber_delta=2.0)
    assert loss_value(standardize=False) != loss_value(standardize=True)
    r = np.linspace(-5, 5, 101)
    assert interval_halfwidth(r, 0.5) < interval_halfwidth(r, 0.9)
    n_all = len(read_table(config_from_dict(_raw(tmp_path, csv_path, max_value=None))))
    assert n_all == N + 1  # the 400 stays without max_value
    assert len(read_table(config_from_dict(_raw(tmp_path, csv_path, min_value=50)))) < N


def test_classifier_options_are_refused_for_regression(tmp_path: Path) -> None:
    from medlens.config import ConfigError
    from medlens.tasks import get_task

    csv_path = _write_dataset(tmp_path)
    with pytest.raises(ConfigError, match="task_options.threshold_method: unknown key for task 'regression'"):
        get_task("regression").validate_config(config_from_dict(_raw(tmp_path, csv_path, threshold_method="youden")))
    raw = _raw(tmp_path, csv_path)
    raw["trainer"]["tta"] = "flips"
    with pytest.raises(ValueError, match="trainer.tta: test-time augmentation cannot act for task 'regression'"):
        get_task("regression").validate_config(config_from_dict(raw))
    assert json.dumps(get_task("regression").options_model.model_json_schema())  # the section documents itself
