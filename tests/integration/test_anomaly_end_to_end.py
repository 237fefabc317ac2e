"""An anomaly bundle through every door: the torch Predictor, ``medlens export`` + the ONNX backend, the REST API
(model card, predictions, error-map explanation, report) and ``medlens predict --report``."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medlens.bundle import Manifest, save_bundle
from medlens.data.labels import LabelSpace
from medlens.data.transforms import resolve_preprocessing
from medlens.models.autoencoder import ReversedAutoencoder, ScoreSpec
from medlens.tasks import list_kinds  # noqa: F401 -- importing the tasks registers their own label kinds (anomaly)

THRESHOLD = 0.25


def anomaly_bundle(path: Path, threshold: float = THRESHOLD) -> Path:
    """A tiny reversed-autoencoder bundle with random weights (the pattern of tests/unit/engine/test_anomaly.py)."""
    torch.manual_seed(0)
    arch = {"type": "reversed_ae", "in_chans": 1, "image_size": 16, "depth": 2, "width": 4, "latent_dim": 4}
    model = ReversedAutoencoder(1, 16, depth=2, width=4, latent_dim=4).eval()
    spec = ScoreSpec(error_map="mse", method="percentile", percentile=95.0, mean=(0.5,), std=(0.5,))
    m = Manifest(arch, LabelSpace(("normal", "pneumonia"), "anomaly"), resolve_preprocessing(16, 1), thresholds=[threshold],
                 task_section={"normal_label": "normal", "threshold": threshold, "fpr": 0.05, "val_normal_fpr": 0.049,
                               "n_val_normals": 204, **spec.to_dict()},
                 intended_use="Test anomaly detector. Not a diagnosis.")
    return save_bundle(model, m, path)


def _images(n: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + i, 24), dtype=np.uint8) for i in range(n)]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _no_nan(obj) -> None:
    """No NaN or infinity anywhere in a decoded JSON document."""
    if isinstance(obj, float):
        assert math.isfinite(obj), obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _no_nan(v)
    elif isinstance(obj, list):
        for v in obj:
            _no_nan(v)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return anomaly_bundle(tmp_path_factory.mktemp("anomaly_e2e") / "bundle")


def test_predictor_gives_score_threshold_and_decision(bundle: Path) -> None:
    from medlens.inference import Predictor

    p = Predictor.from_bundle(bundle)
    imgs = _images()
    preds = p.predict(imgs, names=[f"i{i}" for i in range(len(imgs))])
    for pr in preds:
        assert pr.ok and pr.score is not None and math.isfinite(pr.score) and pr.score >= 0.0
        assert pr.threshold == THRESHOLD
        positive = pr.score >= THRESHOLD
        assert pr.flagged == positive
        assert pr.label == ("pneumonia" if positive else "normal")
        assert not hasattr(pr, "probabilities")  # a score is not a probability


def test_onnx_export_gives_the_torch_scores(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from medlens.export import export_onnx
    from medlens.inference import Predictor

    out = tmp_path / "onnx"
    onnx_file = export_onnx(bundle, out)
    assert onnx_file.is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["onnx"]["output"] == "score"
    imgs = _images(5, seed=3)
    torch_scores = [p.score for p in Predictor.from_bundle(bundle).predict(imgs)]
    onnx_preds = Predictor.from_bundle(out, backend="onnx").predict(imgs)
    onnx_scores = [p.score for p in onnx_preds]
    assert all(s is not None for s in onnx_scores)
    assert np.allclose(onnx_scores, torch_scores, atol=1e-4), (onnx_scores, torch_scores)
    assert [p.label for p in onnx_preds] == ["pneumonia" if s >= THRESHOLD else "normal" for s in onnx_scores]
    # the graph carries the error map too: an ONNX-only folder (no model.safetensors) draws the PyTorch map
    assert not (out / "model.safetensors").exists()
    from medlens.interpret import explain

    onnx_p = Predictor.from_bundle(out, backend="onnx")
    x = onnx_p.transform(imgs[0])[None]
    raw, maps = onnx_p.run_map(x)
    assert maps.shape == (1, 1, *x.shape[-2:]) and np.isclose(raw[0, 0], onnx_scores[0], atol=1e-5)
    e_onnx = explain(onnx_p, imgs[0], method="error_map")[0]
    e_torch = explain(Predictor.from_bundle(bundle), imgs[0], method="error_map")[0]
    assert np.abs(e_onnx.heatmap - e_torch.heatmap).max() < 1e-4
    assert np.isclose(e_onnx.probability, e_torch.probability, atol=1e-4)


@pytest.fixture(scope="module")
def client(bundle: Path):
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app

    with TestClient(create_app(bundle)) as c:
        yield c


def test_model_card_presents_a_score(client) -> None:
    r = client.get("/v1/model")
    assert r.status_code == 200, r.text
    m = r.json()
    _no_nan(m)
    assert m["presentation"]["value_kind"] == "score"
    assert m["presentation"]["value_name"] == "Anomaly score"
    assert m["explain_methods"] == ["error_map"]
    assert m["presentation"]["explain_methods"] == ["error_map"]
    # what the number and the threshold mean, in the words the page and the per-image report show
    summary = m["presentation"]["summary"]
    assert "autoencoder" in summary and "not a probability" in summary
    assert f"threshold {THRESHOLD:.4g} flags 4.9% of the 204 validation normal images" in summary and "false alarms" in summary


def test_predict_findings_carry_the_score_and_the_threshold(client, bundle: Path) -> None:
    imgs = _images(3, seed=5)
    r = client.post("/v1/predict", files=[("files", (f"x{i}.png", _png(a))) for i, a in enumerate(imgs)])
    assert r.status_code == 200, r.text
    assert "NaN" not in r.text and "Infinity" not in r.text
    body = r.json()
    _no_nan(body)
    threshold = json.loads((bundle / "manifest.json").read_text())["task_section"]["threshold"]
    assert len(body["predictions"]) == 3
    for p in body["predictions"]:
        assert "probabilities" not in p  # a detector records a score and a flag, not probabilities
        (f,) = p["findings"]
        assert f["label"] == "pneumonia" and f["value_kind"] == "score" and f["rule"] == "threshold"
        assert f["value"] == pytest.approx(p["score"]) and f["threshold"] == pytest.approx(threshold)
        assert f["positive"] == (p["score"] >= threshold)
        assert f["decision"] in ("positive", "negative") and (f["decision"] == "positive") == f["positive"]


def test_explain_error_map_is_a_png_with_a_score_header(client) -> None:
    img = _images(1, seed=7)[0]
    r = client.post("/v1/explain", files={"file": ("x.png", _png(img))}, data={"method": "error_map"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert Image.open(io.BytesIO(r.content)).size == (img.shape[1], img.shape[0])
    assert r.headers["x-medlens-value-kind"] == "score"
    assert math.isfinite(float(r.headers["x-medlens-value"]))
    assert "x-medlens-probability" not in r.headers
    bad = client.post("/v1/explain", files={"file": ("x.png", _png(img))}, data={"method": "gradcam"})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["code"] == "unknown_method"


def test_report_names_the_anomaly_score(client) -> None:
    r = client.post("/v1/report", files={"file": ("scan.png", _png(_images(1, seed=9)[0]))})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "Anomaly score" in r.text
    assert "NaN" not in r.text and "nan%" not in r.text.lower()


def test_cli_predict_with_reports(bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medlens.cli import app

    paths = []
    for i, a in enumerate(_images(2, seed=11)):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(_png(a))
        paths.append(str(p))
    reports = tmp_path / "reports"
    res = CliRunner().invoke(app, ["predict", str(bundle), *paths, "--report", str(reports)])
    assert res.exit_code == 0, (res.output, res.exception)
    index = reports / "index.html"
    assert index.is_file()
    assert "NaN" not in index.read_text(encoding="utf-8")
    page = (reports / "img0.html").read_text(encoding="utf-8")
    assert "Anomaly score" in page and "data:image/png;base64," in page


def test_export_of_an_ssim_detector_keeps_stdout_to_the_result(tmp_path: Path, capfd) -> None:
    """The TorchScript exporter gives up on the SSIM map (reflect padding) and prints its IR graph to file
    descriptor 1 before the dynamo exporter takes over: stdout must stay clean for the command's result."""
    from medlens.export import export_onnx

    torch.manual_seed(0)
    arch = {"type": "reversed_ae", "in_chans": 1, "image_size": 16, "depth": 2, "width": 4, "latent_dim": 4}
    spec = ScoreSpec(error_map="ssim", method="mean", mean=(0.5,), std=(0.5,), ssim_window=5)
    m = Manifest(arch, LabelSpace(("normal", "pneumonia"), "anomaly"), resolve_preprocessing(16, 1), thresholds=[0.2],
                 task_section={"normal_label": "normal", "threshold": 0.2, "fpr": 0.05, **spec.to_dict()})
    bundle = save_bundle(ReversedAutoencoder(1, 16, depth=2, width=4, latent_dim=4).eval(), m, tmp_path / "ssim")
    capfd.readouterr()
    path = export_onnx(bundle, tmp_path / "onnx")
    out, err = capfd.readouterr()
    assert path.is_file()
    assert out == "", out[:300]  # file descriptor 1 untouched (the IR dump went to stderr)
    assert json.loads((tmp_path / "onnx" / "manifest.json").read_text())["extra"]["onnx"]["outputs"] == ["score", "error_map"]
