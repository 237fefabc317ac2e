"""Per-image clinical reports: self-contained HTML with findings vs thresholds, model card, disclaimer; PDF."""

from __future__ import annotations

import html as _html
import re
from pathlib import Path

import numpy as np
import pytest

from medlens.bundle import read_manifest
from medlens.clinical_report import DISCLAIMER, image_report_html, image_report_pdf, write_reports
from medlens.inference import Prediction, Predictor
from medlens.interpret import explain
from tests.unit._bundles import random_bundle


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    b = random_bundle(tmp_path_factory.mktemp("r") / "b", backbone="test_resnet", image_size=32, task="multilabel",
                      names=("Effusion", "Mass <b>"), thresholds=[0.0, 1.0], intended_use="Triage research only.")
    return Predictor.from_bundle(b)


def test_html_report_content(predictor: Predictor) -> None:
    img = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    pred = predictor.predict_one(img, name="scan<1>.png")
    page = image_report_html(img, pred, explain(predictor, img), predictor.manifest)
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 2  # image + 1 overlay
    assert "Not a diagnosis" in page and _html.escape(DISCLAIMER) in page
    assert "Triage research only." in page and "test_resnet" in page and "medlens" in page
    assert "scan&lt;1&gt;.png" in page and "Mass &lt;b&gt;" in page and "<b>" not in page  # user text is escaped
    row = re.search(r"<tr class='pos'><td>Effusion</td>.*?</tr>", page)
    assert row and "0.000" in row.group(0) and "positive" in row.group(0)  # threshold 0 -> always positive
    assert re.search(r"<tr class=''><td>Mass &lt;b&gt;</td>.*?1.000.*?negative", page)
    assert "src='http" not in page and "<script" not in page


def test_error_report_and_pdf(predictor: Predictor, tmp_path: Path) -> None:
    bad = Prediction("broken.png", error="broken.png: not a readable image")
    page = image_report_html(np.zeros((8, 8), np.uint8), bad, [], predictor.manifest)
    assert "could not be analysed" in page and "Findings" not in page
    img = np.full((30, 30, 3), 120, np.uint8)
    pdf = image_report_pdf(img, predictor.predict_one(img), explain(predictor, img), read_manifest(predictor.path))
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000


def test_write_reports_with_duplicate_names(predictor: Predictor, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    for p in paths:
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)).save(p)
    inputs = [str(p) for p in paths]
    preds = predictor.predict(inputs)
    written = write_reports(predictor, inputs, preds, tmp_path / "rep", pdf=True)
    names = sorted(p.name for p in written)
    assert names == ["index.html", "x.html", "x.pdf", "x_2.html", "x_2.pdf"]
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "x.html" in index and "x_2.html" in index and "Not a diagnosis" in index
