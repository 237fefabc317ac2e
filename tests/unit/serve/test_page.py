"""The web page renders any task's record from the task's findings alone (no task-specific fields), and offers
explanations only when the task has them: its script run under Node with a minimal DOM stub (skipped without Node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from medlens.serve.routes.health import STATIC  # noqa: E402
from medlens.tasks.base import Finding, Presentation  # noqa: E402
from tests.hostile._helpers import good_png  # noqa: E402
from tests.unit._bundles import random_bundle  # noqa: E402

NODE = shutil.which("node")
STUB = Path(__file__).with_name("page_stub.js")


def _served(bundle: Path) -> dict:
    from medlens.serve.app import create_app

    with TestClient(create_app(bundle)) as c:
        return {"presentation": c.get("/v1/model").json()["presentation"],
                "prediction": c.post("/v1/predict", files={"files": ("x.png", good_png(), "image/png")}).json()["predictions"][0]}


def _record(pres: Presentation, *findings: Finding) -> dict:
    """A record as a task without decisions (a value with an interval) writes it: only source and findings shared."""
    return {"presentation": pres.to_dict(), "prediction": {"source": "x.png", "findings": [f.to_dict() for f in findings]}}


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_renders_every_task_from_its_findings(tmp_path):
    cases = [
        {"name": "binary", **_served(random_bundle(tmp_path / "b"))},
        {"name": "multiclass", **_served(random_bundle(tmp_path / "m", task="multiclass", names=("a", "b", "c")))},
        {"name": "value", **_record(Presentation("Predicted value", "value", [], [], (), "s"),
                                    Finding("age", 57.2, "value", None, "none", None, text="predicted age 57 (90 % interval 44-70)",
                                            interval=(44.0, 70.0)))},
        {"name": "score", **_record(Presentation("Anomaly score", "score", ["pneumonia"], ["error_map"], ("flagged", "normal"), "s"),
                                    Finding("pneumonia", 0.71, "score", 0.5, "threshold", True))},
    ]
    ood = _record(Presentation("Probability", "probability", ["p"], ["gradcam"], ("positive", "negative"), "s"),
                  Finding("p", 0.9, "probability", 0.5, "threshold", True))
    ood["prediction"].update(ood=True, ood_score=41.5, ood_threshold=20.25, ood_note="outside")
    cases.append({"name": "ood", **ood})
    data = tmp_path / "records.json"
    data.write_text(json.dumps(cases))
    r = subprocess.run([NODE, str(STUB), str(STATIC / "index.html"), str(data)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = dict(zip(*[iter(r.stdout.splitlines())] * 2, strict=True))  # "name: text" -> "  explain disabled: ..."
    rows = {line.split(": ", 1)[0]: (line.split(": ", 1)[1], buttons) for line, buttons in out.items()}
    assert "Model output: abnormal" in rows["binary"][0] or "Model output: none" in rows["binary"][0]
    assert "highest" in rows["multiclass"][0]
    text, buttons = rows["value"]
    assert "predicted age 57 (90 % interval 44-70)" in text and "positive" not in text and "negative" not in text
    assert buttons.strip() == "explain disabled: true report disabled: true"  # no explanation methods: nothing to ask
    assert "flagged" in rows["score"][0] and "0.7100" in rows["score"][0]
    assert rows["binary"][1].strip() == "explain disabled: false report disabled: false"
    # the out-of-distribution gate's verdict comes first; the finding is still shown
    assert rows["ood"][0].index("Outside the training distribution: score 41.5 above 20.3") < rows["ood"][0].index("Model output: p")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_model_card_shows_performance_by_patient_group(tmp_path):
    """The page answers "does it fail a group of patients?" from what /v1/model publishes (the bundle's test subgroup
    table): a row per group with n and intervals, the largest gap, and groups too small to read said so; a bundle
    without a table shows no section."""
    from medlens.bundle import read_manifest
    from medlens.serve.public import public_model_info

    bundle = random_bundle(tmp_path / "b")
    man = read_manifest(bundle)
    ci = lambda v, lo, hi: {"value": v, "low": lo, "high": hi, "n_valid": 500}  # noqa: E731
    man.metrics = {"test": {"subgroups": {"unit": "patient", "warnings": [], "columns": {"Patient Gender": {
        "levels": ["F", "M"], "missing": 0, "banding": "values",
        "subgroups": {"F": {"n": 120, "auroc": ci(0.81, 0.74, 0.87), "sensitivity": ci(0.7, 0.6, 0.8), "specificity": ci(0.8, 0.7, 0.9), "readable": True},
                      "M": {"n": 9, "auroc": ci(0.55, 0.2, 0.9), "sensitivity": ci(0.5, 0.1, 0.9), "specificity": ci(0.6, 0.3, 0.9), "readable": False}},
        "gaps": {"auroc": {**ci(0.26, -0.1, 0.6), "high_group": "F", "low_group": "M", "readable": False}}}}}}}
    published = public_model_info(man)
    assert published["metrics"]["test"]["subgroups"]["columns"]["Patient Gender"]["levels"] == ["F", "M"]
    cases = [{"name": "with", "model": published}, {"name": "without", "model": public_model_info(read_manifest(bundle))}]
    data = tmp_path / "models.json"
    data.write_text(json.dumps(cases))
    r = subprocess.run([NODE, str(STUB), str(STATIC / "index.html"), str(data), "model"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    text = out["with"]
    assert text.startswith("hidden=false Performance by patient group (test split; 95 % intervals, patient bootstrap)")
    assert "F1200.81 (0.74 to 0.87)0.70 (0.60 to 0.80)0.80 (0.70 to 0.90)" in text
    assert "M90.55 (0.20 to 0.90)" in text and "too small to read" in text
    assert "Largest AUROC gap in Patient Gender: 0.26 (-0.10 to 0.60) (F vs M); it involves a group too small to read" in text
    assert out["without"].startswith("hidden=true")
