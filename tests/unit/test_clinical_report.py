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
    # the decision first, then the number and the threshold it was compared with
    assert re.search(r"<tr class=''><td>Mass &lt;b&gt;</td><td>negative</td>.*?1.000", page)
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


def test_report_says_what_went_in_and_when(predictor: Predictor) -> None:
    img = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    pred = predictor.predict_one(img)  # an in-memory array: no file name
    assert pred.source == "<array>"
    page = image_report_html(img, pred, explain(predictor, img, method="gradcam"), predictor.manifest)
    assert "<title>medlens report: image</title>" in page and "&lt;array&gt;" not in page
    assert "in-memory image" in page and predictor.manifest.weights_sha256 in page  # the full sha256
    assert re.search(r"Report generated</strong></td><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    assert "Grad-CAM" in page or "gradient" in page.lower()  # the method's own caption
    pdf = image_report_pdf(img, pred, [], predictor.manifest)
    assert b"medlens report: image" in pdf and b"<array>" not in pdf  # the PDF's Title


def test_fusion_report_lists_its_metadata(tmp_path: Path) -> None:
    from tests.unit._bundles import random_bundle

    arch = {"type": "fusion", "backbone": "test_resnet", "num_outputs": 2, "in_chans": 1, "image_size": 32, "meta_dim": 4,
            "meta_hidden": [8], "meta_dropout": 0.0}
    p = Predictor.from_bundle(random_bundle(tmp_path / "f", arch=arch, task="multilabel", names=("u", "v")))
    img = np.zeros((32, 32), np.uint8)
    meta = {"age": 63, "sex": "F", "site": "<img src=x onerror=alert(1)>"}
    page = image_report_html(img, p.predict_one(img, name="lesion.png"), [], p.manifest, metadata=meta)
    table = page.split("Metadata given to the model", 1)[1].split("</table>", 1)[0]
    assert "<td>age</td><td>63</td>" in table and "<td>sex</td><td>F</td>" in table
    assert "&lt;img src=x onerror=alert(1)&gt;" in table and "<img src=x" not in page  # data stays text
    assert "<title>medlens report: lesion.png</title>" in page


def test_dicom_report_lists_uids_and_no_patient_data(predictor: Predictor, tmp_path: Path) -> None:
    import pydicom

    from medlens.data.io import dicom_bytes

    path = tmp_path / "study.dcm"
    path.write_bytes(dicom_bytes(np.random.default_rng(0).integers(0, 4000, (32, 32)).astype(np.uint16)))
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-998877", "19510203"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
    ds.save_as(path)
    written = write_reports(predictor, [str(path)], predictor.predict([str(path)]), tmp_path / "rep", pdf=True)
    page = (tmp_path / "rep" / "study.html").read_text()
    for uid in ("StudyInstanceUID</strong></td><td>1.2.3.4<", "SeriesInstanceUID</strong></td><td>1.2.3.4.5<", "SOPInstanceUID</strong></td><td>1.2.3.4.5.6<"):
        assert uid in page
    assert "<td>study.dcm</td>" in page
    for secret in ("Doe", "Jane", "PID-998877", "19510203", "1951"):
        assert secret not in page
    pdf = next(p for p in written if p.suffix == ".pdf").read_bytes()
    assert b"Doe" not in pdf and b"PID-998877" not in pdf


def test_generated_banner_and_operating_point_in_html_and_pdf(tmp_path: Path) -> None:
    """A demo bundle's per-image report, HTML and PDF: the generated-data banner, and the operating point at the deployed
    threshold on the named split with its Wilson and patient-bootstrap intervals."""
    pypdf = pytest.importorskip("pypdf")
    import io

    from medlens.provenance import GENERATED_BANNER as BANNER
    from medlens.provenance import training_data_record
    from medlens.tasks import get_task

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 3)
    y = np.repeat(rng.integers(0, 2, 40), 3)
    s = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 120), 0, 1)[:, None]
    plain = read_manifest(random_bundle(tmp_path / "p", thresholds=[0.5]))
    test = get_task("binary").metrics(s, np.eye(2)[y], plain, groups=[f"p{g}" for g in patients])
    rec = training_data_record({"kind": "synthetic"}, {"train": (560, {"normal": {"positive": 280}, "abnormal": {"positive": 280}})},
                               generated=True)
    b = random_bundle(tmp_path / "b", thresholds=[0.5], metrics={"test": test}, training_data=rec)
    p = Predictor.from_bundle(b)
    img = np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)
    pred = p.predict_one(img)
    op = "abnormal on the test split (n=120) of 40 patients, threshold 0.500: sensitivity"

    page = _html.unescape(image_report_html(img, pred, [], p.manifest))
    assert "id='generated-banner'" in page and BANNER in page
    assert op in page and "95% CI" in page and "patient bootstrap" in page and "resampling the split's 40 patients" in page
    exp = explain(p, img, method="gradcam")
    assert "(score = " in _html.unescape(image_report_html(img, pred, exp, p.manifest))  # the page's word, not "p"

    text = pypdf.PdfReader(io.BytesIO(image_report_pdf(img, pred, [], p.manifest))).pages[0].extract_text()
    flat = " ".join(text.split())  # lines are wrapped in the PDF
    assert BANNER in flat
    assert op in flat and "95% CI" in flat and "patient bootstrap" in flat and "PPV" in flat and "NPV" in flat
    assert "calibration error" in flat and "Score" in flat and "Prob." not in flat  # this ECE makes it a score
