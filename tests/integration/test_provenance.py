"""What a clinician sees beside a decision: the training-data record of a real (tiny) training on the generated demo
data, with its banner, and the operating point with intervals -- in the manifest, ``/v1/model``, ``predict --json``
and the per-image report; an older bundle says its training data is not recorded."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.bundle import load_bundle, read_manifest
from medlens.config import config_from_dict
from medlens.provenance import GENERATED_BANNER, NOT_RECORDED
from tests.conftest import tiny_config
from tests.unit._bundles import random_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medlens.training import train

    tmp = tmp_path_factory.mktemp("prov")
    raw = tiny_config(tmp, {"kind": "synthetic", "num_samples": 80, "image_size": 32, "channels": 1, "label_names": ["normal", "abnormal"]})
    raw["population"] = "generated blobs, two per 'patient'"
    raw["intended_use"] = "Provenance test only."
    return train(config_from_dict(raw)).bundle_dir


def test_training_records_its_data(trained: Path) -> None:
    m = read_manifest(trained)
    rec = m.training_data
    assert rec is not None
    assert rec["source_kind"] == "synthetic" and rec["generated"] is True
    assert rec["n"] == {"train": 56, "val": 12, "test": 12}  # the reader's 70/15/15 split of 80 images
    for split, n in rec["n"].items():
        assert sum(rec["per_class"][split].values()) == n  # one class per image
        assert set(rec["per_class"][split]) == {"normal", "abnormal"}
    assert rec["trained"] == dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert rec["population"] == "generated blobs, two per 'patient'" and rec["intended_use"] == "Provenance test only."
    assert str(trained.parent.parent) not in json.dumps(rec)  # no host path


def test_model_route_shows_provenance_banner_and_operating_point(trained: Path) -> None:
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app

    m = load_bundle(trained).manifest
    with TestClient(create_app(trained)) as c:
        info = c.get("/v1/model").json()
    data = info["training_data"]
    assert data["recorded"] and data["generated"] and data["banner"] == GENERATED_BANNER
    assert "synthetic" in data["summary"] and "train n=56" in data["summary"] and "population: generated blobs" in data["summary"]
    op = info["operating_point"]
    assert op["split"] == "test" and op["n"] == 12  # the test split, named, with its n
    sens = op["labels"]["abnormal"]["sensitivity"]
    per = m.metrics["test"]["per_label"]["abnormal"]
    assert (sens["k"], sens["n"]) == (per["tp"], per["tp"] + per["fn"])
    assert sens["low"] <= sens["estimate"] <= sens["high"]
    assert "on the test split (n=12)" in op["text"][0] and "PPV" in op["text"][0] and "NPV" in op["text"][0]
    # the word follows the measured calibration error, which is shown beside it
    ece = m.metrics["test"]["ece"]
    assert op["ece"] == pytest.approx(ece)
    word = "probability" if ece < op["ece_bound"] else "score"
    assert op["value_word"] == word and info["presentation"]["value_name"] == word.capitalize()
    assert f"{ece:.3f}" in info["presentation"]["summary"] and f"{ece:.3f}" in op["calibration"]


def test_predict_json_and_report_carry_the_banner(trained: Path, tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(img)
    r = subprocess.run([sys.executable, "-m", "medlens.cli", "predict", str(trained), str(img), "--json", "--report", str(tmp_path / "rep")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    records = json.loads(r.stdout)
    assert records[0]["training_data"]["banner"] == GENERATED_BANNER and records[0]["training_data"]["generated"] is True
    html = (tmp_path / "rep" / "x.html").read_text(encoding="utf-8")
    assert GENERATED_BANNER in html and "id='operating-point'" in html and "on the test split (n=12)" in html
    assert "train n=56" in html  # the training-data section
    # decision first, then the score
    head = html[html.index("<h2>Findings</h2>"):]
    assert head.index("<th>Decision</th>") < head.index("<th>Score</th>" if "<th>Score</th>" in head else "<th>Probability</th>")


def test_older_bundle_says_training_data_not_recorded(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from medlens.clinical_report import image_report_html
    from medlens.inference import Predictor
    from medlens.serve.app import create_app

    b = random_bundle(tmp_path / "old", image_size=32)
    d = json.loads((b / "manifest.json").read_text())
    assert d["training_data"] is None
    with TestClient(create_app(b)) as c:
        info = c.get("/v1/model").json()
        pred = c.post("/v1/predict", files={"files": ("a.png", _png(), "image/png")}).json()
    # the typed response lists every field of the record; an older bundle has none of them
    shown = {k: v for k, v in info["training_data"].items() if v is not None}
    assert shown == {"recorded": False, "summary": NOT_RECORDED}
    assert info["operating_point"] is None  # no split metrics in this bundle: nothing to show, nothing invented
    assert info["presentation"]["value_name"] == "Score"  # calibration never measured: not called a probability
    assert pred["predictions"][0]["training_data"]["summary"] == NOT_RECORDED
    p = Predictor.from_bundle(b)
    img = np.zeros((32, 32), np.uint8)
    html = image_report_html(img, p.predict_one(img), [], p.manifest)
    assert NOT_RECORDED in html and GENERATED_BANNER not in html


def _png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_history_and_report_name_rates_at_half_and_show_one_auroc(trained: Path, tmp_path: Path) -> None:
    import csv

    from medlens.report import build_report

    with open(trained.parent / "history.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "val/accuracy@0.5" in header and "val/f1_macro@0.5" in header and "val/sensitivity_macro@0.5" in header
    assert "val/auroc_macro" in header and "val/accuracy" not in header  # threshold-free metrics keep their names
    res = build_report(trained.parent, out=tmp_path / "rep", n_boot=50)
    html = res.html.read_text(encoding="utf-8")
    head = html[html.index("Headline metrics"):html.index("Per label")]
    assert "AUROC (micro)" not in head and "AUROC (weighted)" not in head and "(macro)" not in head  # binary: one row each
    assert head.count("auroc_macro") == 1
