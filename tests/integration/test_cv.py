"""`medlens cv`: 5 folds on BreastMNIST on CPU with mean +- std; folds never share a group (patient)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medlens.cli import app
from medlens.config import config_from_dict, load_config
from medlens.data.readers import read_dataset
from medlens.data.splits import FoldLeakError, check_disjoint_folds, find_group_leaks, fold_plan, fold_splits
from tests.conftest import ROOT, tiny_config
from tests.integration.test_report import nih_data


def _assert_group_disjoint(table, plan) -> None:
    keys = np.asarray([g if g is not None else f"id:{i}" for g, i in zip(table.groups, table.ids, strict=True)]) if table.groups is not None else table.ids.astype(str)
    held = [set(keys[s.test].tolist()) for s in plan]
    for a in range(len(held)):
        for b in range(a + 1, len(held)):
            assert not held[a] & held[b], f"folds {a} and {b} share held-out groups"
    assert sorted(np.concatenate([s.test for s in plan]).tolist()) == list(range(len(table)))  # each row held out once
    for s in plan:
        assert not find_group_leaks(table, s)  # train / inner val / held-out are group-disjoint inside a fold
        assert len(set(s.train) | set(s.val) | set(s.test)) == len(table)


def test_nih_folds_keep_patients_together_and_stratify(nih_dir):
    cfg = config_from_dict({"data": nih_data(nih_dir)})
    table = read_dataset(cfg.data)
    assert table.groups is not None and len(set(table.groups)) < len(table)  # patients with several images
    plan = fold_plan(table, folds=5, seed=0, val_fraction=0.15)
    _assert_group_disjoint(table, plan)
    # multi-label iterative stratification: every fold gets a fair share of the common findings
    pos = np.stack([np.nansum(table.targets[s.test], axis=0) for s in plan])
    effusion = pos[:, list(table.label_space.names).index("Effusion")]
    assert effusion.min() >= 0.5 * effusion.mean()
    assert fold_splits(table, 5, 3, 0, 0.15).test.tolist() == plan[3].test.tolist()  # what a fold's bundle re-creates
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        fold_splits(table, 5, 5)


def test_check_disjoint_folds_catches_a_shared_patient(nih_dir):
    table = read_dataset(config_from_dict({"data": nih_data(nih_dir)}).data)
    g = table.groups
    shared = np.flatnonzero(g == g[np.argmax([np.sum(g == x) for x in g[:50]])])  # a patient with several images
    assert len(shared) > 1
    with pytest.raises(FoldLeakError, match="held out in folds 0 and 1"):
        check_disjoint_folds(table, [shared[:1], shared[1:]])


@pytest.mark.slow
@pytest.mark.heavy  # 53 s; the ensemble test below runs the same cv path on fewer folds
def test_cv_breastmnist_five_folds(breast_npz, tmp_path):
    raw = tiny_config(
        tmp_path, {"kind": "medmnist", "path": str(breast_npz), "image_size": 28, "channels": 1, "batch_size": 64, "max_samples": 400,
                   "split": {"method": "kfold", "folds": 5, "val_fraction": 0.15, "seed": 0}},
        model={"backbone": "resnet10t", "small_input": 2}, trainer={"threshold_method": "youden"},
    )
    raw["targets"] = {"auroc_macro": 0.5}
    raw["output"]["name"] = "bcv"
    cfg_path = tmp_path / "cv.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["cv", str(cfg_path), "--folds", "5"])
    assert res.exit_code == 0, res.output
    assert "auroc_macro:" in res.output and "+-" in res.output and "over 5 folds" in res.output
    cv_dir = tmp_path / "runs" / "bcv"
    doc = json.loads((cv_dir / "cv.json").read_text())
    assert doc["folds"] == 5 and len(doc["fold_results"]) == 5 and doc["group_disjoint_folds"]
    # every image is held out exactly once, never by two folds (no patient ids: each image is its own group)
    held = [set(f["held_out_ids"]) for f in doc["fold_results"]]
    assert sum(len(h) for h in held) == len(set().union(*held)) == doc["num_samples"] == 400
    s = doc["summary"]["auroc_macro"]
    vals = [f["metrics"]["auroc_macro"] for f in doc["fold_results"]]
    assert s["n_folds"] == 5 and s["values"] == vals
    assert s["mean"] == pytest.approx(np.mean(vals)) and s["std"] == pytest.approx(np.std(vals, ddof=1))
    assert doc["targets"][0]["metric"] == "auroc_macro" and doc["targets"][0]["value"] == s["mean"]
    assert doc["pooled_out_of_fold"]["n"] == 400
    text = (cv_dir / "report.html").read_text()
    assert "&plusmn;" in text and all(f"fold {i}" in text for i in range(5)) and "data:image/png;base64," in text
    # a fold's bundle remembers its fold: evaluating it on "test" re-creates that held-out part exactly
    from medlens.evaluation import evaluate

    f2 = doc["fold_results"][2]
    r = evaluate(f2["bundle"], split="test", record=False)
    assert sorted(r.ids) == sorted(f2["held_out_ids"])
    assert r.metrics["auroc_macro"] == pytest.approx(f2["metrics"]["auroc_macro"], abs=1e-9)


def test_shipped_cv_and_nih_configs_load():
    cv = load_config(ROOT / "configs" / "breastmnist_cv.yaml")
    assert cv.data.split.method == "kfold" and cv.data.split.folds == 5 and cv.targets
    nih = load_config(ROOT / "configs" / "nih_multilabel.yaml")
    assert nih.data.kind == "csv" and nih.data.group_column == "Patient ID" and nih.data.image_size == 64
    assert nih.data.split.method == "group" and Path(nih.data.path).name == "nih1000_labels.csv"


def _synthetic_npz(path: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """A MedMNIST-format file whose positives carry a bright square: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes.items():
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 90, (n, 28, 28)).astype(np.uint8)
        x[y == 1, 8:20, 8:20] = 230
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None].astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_cv_ensemble_keeps_the_test_split_out_of_every_fold_and_reads_it_once(tmp_path):
    """`medlens cv --ensemble` with data.split.cv_holdout: auto -- folds over train+val only; the ensemble bundle
    is then evaluated on the dataset's own test split, which no member saw."""
    from medlens.evaluation import evaluate

    npz = _synthetic_npz(tmp_path / "syn.npz", {"train": 90, "val": 30, "test": 40})
    raw = tiny_config(
        tmp_path, {"kind": "medmnist", "flag": "pneumoniamnist", "path": str(npz), "image_size": 28, "channels": 1,
                   "split": {"folds": 3, "cv_holdout": "auto"}},
        model={"backbone": "resnet10t", "small_input": 2}, trainer={"threshold_method": "youden"},
    )
    raw["output"]["name"] = "ecv"
    cfg_path = tmp_path / "cv.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["cv", str(cfg_path), "--ensemble"])
    assert res.exit_code == 0, res.output
    cv_dir = tmp_path / "runs" / "ecv"
    assert f"ensemble bundle: {cv_dir / 'ensemble'}" in res.output
    doc = json.loads((cv_dir / "cv.json").read_text())
    test_ids = {f"pneumoniamnist/test/{i}" for i in range(40)}
    held = [set(f["held_out_ids"]) for f in doc["fold_results"]]
    assert set().union(*held) == {f"pneumoniamnist/{s}/{i}" for s, n in (("train", 90), ("val", 30)) for i in range(n)}
    assert sum(len(h) for h in held) == 120 and doc["held_out"]["rows"] == 40
    for f in doc["fold_results"]:  # no test row trained, validated or was scored in any fold
        assert sum(f["sizes"].values()) == 120
    # a fold's bundle still re-creates its fold (folds over train+val, from the saved cv_holdout)
    f1 = doc["fold_results"][1]
    assert sorted(evaluate(f1["bundle"], split="test", record=False).ids) == sorted(f1["held_out_ids"])
    # the ensemble's own test split is the held-out one
    r = evaluate(cv_dir / "ensemble", split="test", record=False)
    assert set(r.ids) == test_ids
    assert r.metrics["auroc_macro"] > 0.9  # the square is learnable: the mean of three 1-epoch members finds it
    m = json.loads((cv_dir / "ensemble" / "manifest.json").read_text())
    assert m["extra"]["ensemble"]["held_out"] is True and len(m["architecture"]["members"]) == 3
    assert m["config"]["data"]["split"]["method"] == "auto"
    assert len(m["thresholds"]) == 1  # youden on the pooled out-of-fold probabilities
    # the evaluation report of the ensemble reads the same held-out rows
    rep = CliRunner().invoke(app, ["report", str(cv_dir / "ensemble"), "--split", "test", "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["data"]["n"] == 40


def test_cv_holdout_without_test_rows_is_refused(tmp_path):
    npz = _synthetic_npz(tmp_path / "syn.npz", {"train": 40, "val": 20, "test": 0})
    raw = tiny_config(tmp_path, {"kind": "medmnist", "flag": "pneumoniamnist", "path": str(npz), "image_size": 28, "channels": 1,
                                 "split": {"folds": 2, "cv_holdout": "predefined"}})
    cfg_path = tmp_path / "cv.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["cv", str(cfg_path), "--ensemble"])
    assert res.exit_code != 0 and "cv_holdout: predefined leaves no test rows" in res.output
    assert "Traceback" not in res.output
