"""Subgroup performance on real data: a tiny model on half of NIH1000 (every other row, 32 px, one epoch: about 35 s
of CPU) trained from a CSV config whose metadata_columns (not
fusion) carry sex, age and view; `medlens evaluate --json` slices the test split by them (n summing to the split),
with gaps and warnings; `--subgroups` picks columns, an unknown one is one line and exit 2; the report has the
table and the forest plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from medlens.cli import app
from tests.conftest import tiny_config

META = ["Patient Gender", "Patient Age", "View Position"]


@pytest.fixture(scope="module")
def nih_meta_run(tmp_path_factory, nih_dir: Path):
    from medlens.config import config_from_dict
    from medlens.training import train

    tmp = tmp_path_factory.mktemp("nih_sub")
    rows = list(csv.DictReader((nih_dir / "nih1000_labels.csv").open(newline="")))[::2]  # 500 of NIH1000's rows: CPU time
    for r in rows:
        r["path"] = str(nih_dir / r["path"])
    with (tmp / "nih500.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = {
        "kind": "csv", "path": str(tmp / "nih500.csv"), "image_column": "path", "label_column": "Finding Labels",
        "label_delimiter": "|", "no_finding": "No Finding", "group_column": "Patient ID", "task": "multilabel",
        "image_size": 32, "channels": 1, "batch_size": 64, "metadata_columns": META,
        "split": {"method": "group", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    }
    cfg = config_from_dict(tiny_config(tmp, data, model={"backbone": "resnet10t", "small_input": False}))
    assert cfg.data.metadata is None  # fusion is off: the columns are only carried
    return SimpleNamespace(run_dir=train(cfg).run_dir, config=cfg)


@pytest.mark.slow
def test_evaluate_json_slices_the_test_split_by_sex_view_and_age_band(nih_meta_run):
    from medlens.evaluation import dataset_splits

    bundle = nih_meta_run.run_dir / "bundle"
    res = CliRunner().invoke(app, ["evaluate", str(bundle), "--json", "--no-record"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    sg = doc["subgroups"]
    table, splits = dataset_splits(nih_meta_run.config, allow_group_leakage=True)
    n_test = len(splits.test)
    assert set(sg["columns"]) == set(META) and sg["unit"] == "patient" and sg["metrics"] == ["auroc", "sensitivity", "specificity"]
    sex, age, view = (sg["columns"][c] for c in META)
    assert sex["levels"] == ["F", "M"] and set(view["levels"]) == {"AP", "PA"}
    assert set(age["levels"]) <= {"<40", "40-59", "60-79", ">=80"} and len(age["levels"]) >= 3 and "age bands" in age["banding"]
    for col in (sex, view, age):
        assert sum(e["n"] for e in col["subgroups"].values()) + col["missing"] == n_test
    test_meta = table.subset(splits.test).metadata
    assert sex["subgroups"]["F"]["n"] == int((test_meta["Patient Gender"] == "F").sum())
    for e in sex["subgroups"].values():
        a = e["auroc"]
        assert 0 <= a["low"] <= a["value"] <= a["high"] <= 1 and e["patients"] <= e["n"] and len(e["per_label"]) == 14
    gap = sex["gaps"]["auroc"]
    assert {gap["high_group"], gap["low_group"]} == {"F", "M"}
    assert gap["value"] == pytest.approx(abs(sex["subgroups"]["F"]["auroc"]["value"] - sex["subgroups"]["M"]["auroc"]["value"]))
    assert gap["low"] is not None and gap["low"] <= gap["value"] <= gap["high"]
    assert sex["gaps"]["sensitivity"]["value"] is not None
    small = [lv for lv, e in age["subgroups"].items() if not e["readable"]]
    assert small and all(any(w.startswith(f"Patient Age = {lv}: ") for w in sg["warnings"]) for lv in small)


@pytest.mark.slow
def test_the_bundle_carries_its_test_subgroups_for_the_api_and_page(nih_meta_run):
    """Training slices its final split by the metadata columns too: the bundle's metrics (what /v1/model publishes)
    carry the same table `evaluate` computes, so the page can show it without the data."""
    from medlens.bundle import read_manifest

    sg = read_manifest(nih_meta_run.run_dir / "bundle").metrics["test"]["subgroups"]
    assert set(sg["columns"]) == set(META) and sg["unit"] == "patient"
    res = CliRunner().invoke(app, ["evaluate", str(nih_meta_run.run_dir / "bundle"), "--json", "--no-record"])
    ev = json.loads(res.stdout)["subgroups"]
    for c in META:
        assert sg["columns"][c]["levels"] == ev["columns"][c]["levels"]
        for lv, e in sg["columns"][c]["subgroups"].items():
            assert e["n"] == ev["columns"][c]["subgroups"][lv]["n"]
            assert e["auroc"]["value"] == pytest.approx(ev["columns"][c]["subgroups"][lv]["auroc"]["value"], abs=1e-6)


@pytest.mark.slow
def test_subgroups_option_picks_columns_and_refuses_unknown_ones(nih_meta_run, tmp_path):
    bundle = nih_meta_run.run_dir / "bundle"
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(bundle), "--subgroups", "View Position", "--no-record"])
    assert res.exit_code == 0, res.output
    assert "subgroups (95% CI" in res.stdout and "largest gap, View Position: AUROC" in res.stdout
    assert "Patient Gender" not in res.stdout.split("subgroups (95% CI")[1]
    bad = runner.invoke(app, ["evaluate", str(bundle), "--subgroups", "Patient Sex", "--no-record"])
    assert bad.exit_code == 2
    lines = [ln for ln in bad.output.strip().splitlines() if ln.strip() and not ln.startswith(("DEBUG: ", "INFO: ", "WARNING: "))]
    assert len(lines) == 1 and "'Patient Sex'" in lines[0] and all(c in lines[0] for c in META), bad.output
    off = runner.invoke(app, ["evaluate", str(bundle), "--subgroups", "none", "--json", "--no-record"])
    assert off.exit_code == 0 and "subgroups" not in json.loads(off.stdout)

    out = tmp_path / "rep"
    rep = runner.invoke(app, ["report", str(nih_meta_run.run_dir), "--out", str(out), "--n-boot", "60",
                              "--subgroups", "Patient Gender,Patient Age"])
    assert rep.exit_code == 0, rep.output
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["subgroups"]["columns"]) == ["Patient Gender", "Patient Age"] and doc["subgroups"]["n_boot"] == 60
    html = (out / "report.html").read_text()
    sec = html.split("<h2>Subgroups</h2>")[1].split("<h2>")[0]
    assert "<h3>Patient Gender</h3>" in sec and ("&gt;=80" in sec or "&lt;40" in sec)
    assert 'alt="forest plot of the metrics per subgroup" src="data:image/png;base64,' in sec
    assert np.isfinite(doc["subgroups"]["columns"]["Patient Gender"]["subgroups"]["M"]["auroc"]["value"])
