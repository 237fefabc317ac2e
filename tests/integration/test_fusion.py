"""Image + metadata fusion end to end on real data: train -> bundle -> predict with (partial) metadata.

Covers binary (HAM10000 mel vs nv), multiclass (NIH single-finding images, 3 classes) and multi-label (NIH, 14
findings). The contract: the bundle's encoder holds training-split statistics, and predictions from the bundle
equal the in-memory model's on the same images and metadata.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medlens.bundle import load_bundle
from medlens.config import config_from_dict
from medlens.data.metadata import MetadataEncoder
from medlens.data.readers import read_dataset
from medlens.data.transforms import make_transform
from medlens.inference import Predictor
from medlens.models import create_model
from medlens.training import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

FAST = {"model": {"backbone": "test_resnet"}, "trainer": {"max_epochs": 1, "progress_bar": False, "calibrate": True, "log_every_n_steps": 1}}


def run(tmp_path: Path, data: dict, **sections):
    cfg = config_from_dict(tiny_config(tmp_path, {"image_size": 32, "batch_size": 16, **data}, **{**FAST, **sections}))
    return cfg, train(cfg)


def split_rows(result, table) -> dict[str, np.ndarray]:
    """Row numbers of each split, recovered from the run's saved prediction ids."""
    pred = np.load(result.run_dir / "predictions.npz", allow_pickle=False)
    pos = {i: k for k, i in enumerate(table.ids)}
    out = {s: np.asarray([pos[i] for i in pred[f"{s}_ids"]]) for s in ("val", "test")}
    held = set(out["val"].tolist()) | set(out["test"].tolist())
    out["train"] = np.asarray([k for k in range(len(table)) if k not in held])
    return out


def in_memory_logits(result, cfg, table, rows) -> np.ndarray:
    """Logits from the best checkpoint's weights and an encoder refitted on the training split, without the bundle."""
    arch = load_bundle(result.bundle_dir).manifest.architecture
    model = create_model(arch).eval()
    ck = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict({k.removeprefix("model."): v for k, v in ck["state_dict"].items() if k.startswith("model.")})
    parts = split_rows(result, table)
    enc = MetadataEncoder.fit(table.subset(parts["train"]), cfg.data.metadata)
    sub = table.subset(rows)
    meta = torch.from_numpy(enc.transform_table(sub))
    from medlens.data.io import load_image
    from medlens.data.transforms import preprocessing_from_config

    tf = make_transform(preprocessing_from_config(cfg.data))
    # the files read as the training loader reads them (JPEGs >= 2x the model's size at reduced DCT scale)
    x = torch.from_numpy(np.stack([tf(load_image(p, reduce_to=cfg.data.image_size)) for p in sub.images]))
    with torch.inference_mode():
        return model(x, meta).numpy()


def ham_data(ham_dir: Path, **meta) -> dict:
    return {
        "kind": "csv", "path": str(ham_dir / "subset100_metadata.csv"), "label_column": "dx", "label_names": ["nv", "mel"],
        "group_column": "lesion_id", "split": {"val_fraction": 0.2, "test_fraction": 0.2},
        "metadata": {"numeric": ["age"], "categorical": ["sex", "localization"], "hidden": [32, 16], **meta},
    }


@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
def test_binary_fusion_bundle_matches_in_memory_model(tmp_path, ham_dir, encoding):
    cfg, result = run(tmp_path, ham_data(ham_dir, encoding=encoding))
    bundle = load_bundle(result.bundle_dir)
    m = bundle.manifest
    assert m.architecture["type"] == "fusion" and m.metadata_encoder is not None
    table = read_dataset(cfg.data)
    parts = split_rows(result, table)
    # statistics from the training split only (not the whole table)
    ages = pd.to_numeric(table.metadata["age"], errors="coerce").to_numpy()
    assert m.metadata_encoder["numeric"][0]["mean"] == pytest.approx(np.nanmean(ages[parts["train"]]))
    assert m.metadata_encoder["numeric"][0]["mean"] != pytest.approx(np.nanmean(ages))
    # bundle predictions == in-memory model predictions, on the test images with their metadata
    test = parts["test"]
    predictor = Predictor(bundle, calibrated=False)
    from_bundle = predictor.predict_table(table.subset(test), logits=True)
    np.testing.assert_allclose(from_bundle, in_memory_logits(result, cfg, table, test), rtol=1e-5, atol=1e-5)
    # predict() with per-image dicts (as a user or the REST API passes them) gives the same probabilities
    rows = [table[int(i)].metadata for i in test]
    preds = Predictor(bundle).predict(list(table.images[test]), metadata=rows)
    np.testing.assert_allclose([p.probabilities["mel"] for p in preds], Predictor(bundle).predict_table(table.subset(test))[:, 0], rtol=1e-6, atol=1e-6)


def test_predict_accepts_missing_and_unknown_metadata(tmp_path, ham_dir):
    cfg, result = run(tmp_path, ham_data(ham_dir))
    predictor = Predictor.from_bundle(result.bundle_dir)
    table = read_dataset(cfg.data)
    img = table.images[0]
    metas = [{"age": 63, "sex": "female", "localization": "back"}, {"age": None}, {}, None, {"sex": "not-a-sex", "localization": "moon"}, {"age": ""}]
    preds = predictor.predict([img] * len(metas), metadata=metas)
    assert all(p.ok for p in preds) and len(preds) == len(metas)
    p = [x.probabilities["mel"] for x in preds]
    assert p[2] == pytest.approx(p[3]) and p[1] == pytest.approx(p[2]) and p[5] == pytest.approx(p[2])  # all missing
    assert predictor.predict([img])[0].probabilities["mel"] == pytest.approx(p[2])  # no metadata at all = all missing
    assert p[0] != pytest.approx(p[2])  # the metadata is used
    with pytest.raises(ValueError, match="'age'"):
        predictor.predict([img], metadata=[{"age": "sixty"}])
    # the CLI: `medlens predict BUNDLE IMAGE --metadata JSON` gives the same probability
    import logging

    from typer.testing import CliRunner

    from medlens.cli import app

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        res = CliRunner().invoke(app, ["predict", str(result.bundle_dir), str(img), "--metadata", '{"age": 63, "sex": "female", "localization": "back"}'])
        bad = CliRunner().invoke(app, ["predict", str(result.bundle_dir), str(img), "--metadata", '{"age": "sixty"}'])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert res.exit_code == 0, res.output
    assert f"mel={p[0]:.4f}" in res.output
    assert bad.exit_code == 2 and "'age'" in bad.output


def nih_subset(nih_dir: Path, out: Path, rows: pd.DataFrame | None = None, n: int = 240) -> Path:
    """A CSV of some NIH1000 rows (random, all splits) with absolute image paths."""
    src = pd.read_csv(nih_dir / "nih1000_labels.csv", dtype=str, keep_default_na=False)
    rows = src.sample(n=n, random_state=0) if rows is None else rows
    rows.assign(path=[str(nih_dir / p) for p in rows["path"]]).to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL)
    return out


def nih_data(csv_path: Path) -> dict:
    return {
        "kind": "csv", "path": str(csv_path), "label_column": "Finding Labels", "no_finding": "No Finding",
        "task": "multilabel", "group_column": "Patient ID", "channels": 1,
        "split": {"method": "group", "val_fraction": 0.25, "test_fraction": 0.25},
        "metadata": {"numeric": ["Patient Age"], "categorical": ["Patient Gender", "View Position"], "hidden": [32]},
    }


@pytest.mark.heavy  # 11 s; fusion training and the bundle's parity are covered by the binary fusion tests
def test_multilabel_fusion_on_nih(tmp_path, nih_dir):
    cfg, result = run(tmp_path, nih_data(nih_subset(nih_dir, tmp_path / "nih240.csv")))
    bundle = load_bundle(result.bundle_dir)
    assert bundle.manifest.task == "multilabel" and bundle.manifest.architecture["type"] == "fusion"
    table = read_dataset(cfg.data)
    test = split_rows(result, table)["test"]
    from_bundle = Predictor(bundle, calibrated=False).predict_table(table.subset(test), logits=True)
    assert from_bundle.shape == (len(test), 14)
    np.testing.assert_allclose(from_bundle, in_memory_logits(result, cfg, table, test), rtol=1e-5, atol=1e-5)
    preds = Predictor(bundle).predict(list(table.images[test[:3]]), metadata=[{"View Position": "AP"}, {"Patient Age": "58"}, {}])
    assert all(p.ok and set(p.probabilities) == set(bundle.manifest.label_names) for p in preds)


def test_multiclass_fusion(tmp_path, nih_dir):
    # single-finding NIH images: three classes, one label per image
    src = pd.read_csv(nih_dir / "nih1000_labels.csv", dtype=str, keep_default_na=False)
    keep = src[src["Finding Labels"].isin(["No Finding", "Effusion", "Infiltration"])].groupby("Finding Labels").head(50)
    data = {**nih_data(nih_subset(nih_dir, tmp_path / "three.csv", keep)), "task": "multiclass",
            "metadata": {"numeric": ["Patient Age"], "categorical": ["View Position"], "hidden": [16]}}
    cfg, result = run(tmp_path, data)
    bundle = load_bundle(result.bundle_dir)
    assert bundle.manifest.task == "multiclass" and bundle.manifest.label_names == ["Effusion", "Infiltration", "No Finding"]
    table = read_dataset(cfg.data)
    test = split_rows(result, table)["test"]
    np.testing.assert_allclose(
        Predictor(bundle, calibrated=False).predict_table(table.subset(test), logits=True),
        in_memory_logits(result, cfg, table, test), rtol=1e-5, atol=1e-5,
    )
    probs = Predictor(bundle).predict([table.images[test[0]]], metadata=[{"Patient Age": None, "View Position": "LL"}])[0].probabilities
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_image_only_config_still_trains_a_plain_classifier(tmp_path, ham_dir):
    data = ham_data(ham_dir)
    data.pop("metadata")
    _, result = run(tmp_path, data)
    m = load_bundle(result.bundle_dir).manifest
    assert m.architecture["type"] == "classifier" and m.metadata_encoder is None
