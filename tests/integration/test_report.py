"""`medlens report` on a tiny NIH ChestX-ray14 model: per-finding AUROC with patient-level CIs, plots that render
in headless Chromium, targets, and evaluation results recorded in the bundle manifest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medlens.bundle import load_bundle, read_manifest
from medlens.cli import app
from medlens.report import check_targets, resolve_source
from tests.conftest import CHROMIUM_FLAGS, tiny_config

FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
]


def nih_data(nih_dir: Path) -> dict:
    """The NIH csv setup of configs/nih_multilabel.yaml (its split leaks patients, so re-split by group)."""
    return {
        "kind": "csv", "path": str(nih_dir / "nih1000_labels.csv"), "image_column": "path",
        "label_column": "Finding Labels", "label_delimiter": "|", "no_finding": "No Finding",
        "group_column": "Patient ID", "task": "multilabel", "image_size": 64, "channels": 1,
        "split": {"method": "group", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    }


@pytest.fixture(scope="module")
def nih_run(tmp_path_factory, nih_dir):
    from medlens.config import config_from_dict
    from medlens.training import train

    tmp = tmp_path_factory.mktemp("nih")
    raw = tiny_config(tmp, nih_data(nih_dir), model={"backbone": "resnet10t", "small_input": False})
    raw["targets"] = {"auroc_macro": 0.3, "ece": 0.01, "auroc/Effusion": 0.2}
    result = train(config_from_dict(raw))
    return result


@pytest.fixture(scope="module")
def nih_report(nih_run):
    res = CliRunner().invoke(app, ["report", str(nih_run.run_dir), "--n-boot", "150"])
    assert res.exit_code == 0, res.output
    return nih_run.run_dir / "report"


@pytest.mark.slow
def test_report_has_per_finding_auroc_with_patient_level_cis(nih_run, nih_report):
    doc = json.loads((nih_report / "metrics.json").read_text())
    assert doc["task"] == "multilabel" and doc["label_names"] == FINDINGS and doc["split"] == "test"
    ci = doc["ci"]
    assert ci["unit"] == "group" and ci["n_boot"] == 150
    assert ci["n_units"] == doc["data"]["groups"] < doc["data"]["n"]  # patients, not images, were resampled
    assert doc["data"]["splits"]["groups_in_two_splits"] == 0
    per = doc["metrics"]["per_label"]
    for name in FINDINGS:
        d, c = per[name], ci["per_label"][name]["auroc"]
        if d["support"] == 0:  # e.g. Hernia has no positive test patient: undefined, not 0 or 1
            assert d["auroc"] is None and c["value"] is None and c["low"] is None
        else:
            assert 0.0 <= d["auroc"] <= 1.0 and c["value"] == d["auroc"]
            if c["n_valid"] >= 20:
                assert c["low"] <= c["value"] <= c["high"]
    head = ci["headline"]["auroc_macro"]
    assert head["low"] <= head["value"] <= head["high"]
    assert {"exact_match", "hamming_accuracy", "ece", "brier"} <= set(ci["headline"])
    # the deployed thresholds and a validation sweep, calibration before/after temperature, targets
    assert len(doc["thresholds"]["deployed"]) == 14 and doc["thresholds"]["sweep"]["split"] == "val"
    assert doc["calibration"]["temperature"] == read_manifest(nih_run.bundle_dir).temperature
    t = {r["metric"]: r for r in doc["targets"]}
    assert t["ece"]["direction"] == "<=" and t["ece"]["met"] is (doc["metrics"]["ece"] <= 0.01)
    assert t["auroc_macro"]["met"] is (doc["metrics"]["auroc_macro"] >= 0.3)
    assert t["auroc/Effusion"]["value"] == per["Effusion"]["auroc"]
    # the HTML names every finding with its AUROC and CI, and embeds its images
    text = (nih_report / "report.html").read_text()
    for name in FINDINGS:
        assert name in text
    assert "95% CI" in text and "Targets" in text and "Calibration" in text
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', text)) >= 5
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained


def _image_checks_playwright(chromium: str, url: str) -> list[dict]:
    from playwright.sync_api import sync_playwright

    js = """() => Array.from(document.images).map(img => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        let ink = 0;
        if (img.naturalWidth > 0) {
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, c.width, c.height).data;
            for (let i = 0; i < d.length; i += 4 * 7) if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++;
        }
        return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, ink: ink};
    })"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[f for f in CHROMIUM_FLAGS if f != "--headless"])
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load")
            return page.evaluate(js)
        finally:
            browser.close()


def _image_checks_dump_dom(chromium: str, html_path: Path, tmp: Path) -> list[dict]:
    """Without playwright: a copy of the page records its images' natural sizes into the DOM on load."""
    probe = tmp / "probe.html"
    script = ("<script>window.addEventListener('load', () => { document.body.setAttribute('data-probe', JSON.stringify("
              "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, ink: 1})))); });</script>")
    probe.write_text(html_path.read_text().replace("</body>", script + "</body>"))
    out = subprocess.run([chromium, *CHROMIUM_FLAGS, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"data-probe=\"([^\"]*)\"", out.stdout)
    assert m, out.stderr[-2000:]
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


@pytest.mark.slow
@pytest.mark.browser
def test_report_plots_render_in_headless_chromium(nih_report, chromium, tmp_path):
    html_path = nih_report / "report.html"
    try:
        imgs = _image_checks_playwright(chromium, html_path.as_uri())
    except ImportError:
        imgs = _image_checks_dump_dom(chromium, html_path, tmp_path)
    alts = {i["alt"] for i in imgs}
    assert {"ROC curves per label", "precision-recall curves per label", "confusion matrices", "reliability diagram", "training curves"} <= alts
    for img in imgs:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
        assert img["ink"] > 50, f"{img['alt']} is blank"


@pytest.mark.slow
def test_evaluate_records_results_in_the_manifest_and_switches_calibration(nih_run, tmp_path):
    from medlens.evaluation import evaluate

    bundle = tmp_path / "bundle"
    shutil.copytree(nih_run.bundle_dir, bundle)
    before = read_manifest(bundle)
    assert before.history and before.metrics["test"]["per_label"]  # training stored history and metrics
    cal = evaluate(bundle, split="test")
    raw = evaluate(bundle, split="test", calibrated=False)
    m = read_manifest(bundle)
    ev = m.metrics["evaluations"]
    assert set(ev) == {"test", "test_uncalibrated"}
    assert ev["test"]["calibrated"] is True and ev["test_uncalibrated"]["calibrated"] is False
    assert ev["test"]["metrics"]["auroc_macro"] == cal.metrics["auroc_macro"]
    # temperature changes confidence, not ranking
    if before.temperature != 1.0:
        assert not np.allclose(cal.probs, raw.probs)
    np.testing.assert_allclose(np.argsort(cal.probs[:, 4]), np.argsort(raw.probs[:, 4]))
    assert m.metrics["test"] == before.metrics["test"] and m.history == before.history  # nothing else changed
    load_bundle(bundle)  # the weights checksum still verifies
    res = CliRunner().invoke(app, ["evaluate", str(bundle), "--split", "val", "--uncalibrated", "--no-record"])
    assert res.exit_code == 0, res.output
    assert set(read_manifest(bundle).metrics["evaluations"]) == {"test", "test_uncalibrated"}


@pytest.mark.slow
def test_evaluate_on_a_read_only_bundle_still_returns_metrics(nih_run, tmp_path, monkeypatch, caplog):
    """A bundle in a read-only model store cannot take the record; the evaluation itself must not fail."""
    import medlens.bundle
    from medlens.evaluation import evaluate

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(medlens.bundle, "update_manifest", read_only)  # as root, chmod cannot make a folder read-only
    before = (nih_run.bundle_dir / "manifest.json").read_bytes()
    with caplog.at_level("WARNING", logger="medlens.evaluation"):
        r = evaluate(nih_run.bundle_dir, split="val")
    assert np.isfinite(r.metrics["auroc_macro"])
    assert "could not record" in caplog.text and "Permission denied" in caplog.text
    assert (nih_run.bundle_dir / "manifest.json").read_bytes() == before


def test_resolve_source_and_targets(tmp_path):
    (tmp_path / "run" / "bundle").mkdir(parents=True)
    (tmp_path / "run" / "bundle" / "manifest.json").write_text("{}")
    assert resolve_source(tmp_path / "run") == (tmp_path / "run" / "bundle", tmp_path / "run")
    assert resolve_source(tmp_path / "run" / "bundle") == (tmp_path / "run" / "bundle", tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        resolve_source(tmp_path)
    m = {"auroc_macro": 0.8, "ece": 0.05, "per_label": {"E": {"auroc": 0.9}}}
    ci = {"headline": {"auroc_macro": {"low": 0.7, "high": 0.9}, "ece": {"low": 0.02, "high": 0.08}}, "per_label": {}}
    from medlens.tasks import get_task

    rows = {r["metric"]: r for r in check_targets({"auroc_macro": 0.75, "ece": 0.06, "auroc/E": 0.95, "f2": 1.0}, m, ci,
                                                  task=get_task("multilabel"))}  # the task says ece is lower-is-better
    assert rows["auroc_macro"]["met"] is True and rows["auroc_macro"]["met_at_ci_bound"] is False
    assert rows["ece"]["met"] is True and rows["ece"]["direction"] == "<=" and rows["ece"]["met_at_ci_bound"] is False
    assert rows["auroc/E"]["met"] is False
    assert rows["f2"]["met"] is None and "unknown" in rows["f2"]["note"]


def test_report_cli_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "neither a run folder" in res.output


def test_small_sample_report_shows_wilson_per_label_temperatures_and_warnings(tmp_path):
    """A random-weights multi-label bundle on a tiny csv dataset: no training, seconds on a CPU."""
    import csv

    from PIL import Image

    from medlens.report import build_report
    from tests.unit._bundles import random_bundle

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        split = "train" if i < 20 else ("val" if i < 30 else "test")
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        j = i - 30
        # test split: Mass's 5 positives all belong to patient P0; Edema is positive for every third patient
        labels = [*(["Mass"] if 0 <= j < 5 else []), *(["Edema"] if i % 3 == 0 else [])]
        rows.append({"path": f"im{i}.png", "labels": "|".join(labels), "patient": "P0" if 0 <= j < 5 else f"P{i}", "split": split})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = {"kind": "csv", "path": str(tmp_path / "labels.csv"), "image_column": "path", "label_column": "labels",
            "label_delimiter": "|", "group_column": "patient", "split_column": "split", "task": "multilabel",
            "label_names": ["Mass", "Edema"], "image_size": 32, "channels": 1, "split": {"method": "predefined"}}
    cfg = tiny_config(tmp_path, data)
    calib = {"temperature": [1.3, 20.0], "per_label": True, "labels": ["Mass", "Edema"], "range": [0.05, 20.0],
             "at_bound": ["Edema"], "bound_hit": True}
    bundle = random_bundle(tmp_path / "bundle", backbone="test_resnet", task="multilabel", names=("Mass", "Edema"),
                           thresholds=[0.5, 0.5], temperature=[1.3, 20.0], config=cfg, metrics={"calibration": calib})
    r = build_report(bundle, out=tmp_path / "rep", n_boot=60)
    doc = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    mass = doc["metrics"]["per_label"]["Mass"]
    assert mass["support"] == 5 and mass["positive_groups"] == 1 and mass["small_sample"] is True
    assert any("'Mass' has 5 positive(s) from 1 patient" in w for w in doc["warnings"])
    sens = mass["wilson"]["sensitivity"]
    assert sens["n"] == 5 and sens["k"] == mass["tp"] and 0.0 <= sens["low"] <= sens["high"] <= 1.0
    assert doc["calibration"]["fit"]["rows"] == [{"output": "Mass", "temperature": 1.3, "at_bound": False},
                                                 {"output": "Edema", "temperature": 20.0, "at_bound": True}]
    curves = doc["curves"]["labels"]["Edema"]
    assert curves["operating_point"]["threshold"] == 0.5 and len(curves["roc"]["tpr"]) == len(doc["curves"]["grid"])
    text = r.html.read_text()
    assert "Wilson" in text and "one per label" in text and "hit a bound of the search range" in text
    assert "Mass&#x27; has 5 positive(s) from 1 patient" in text
    assert f"{sens['k']}/5" in text  # k of n beside the interval
