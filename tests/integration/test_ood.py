"""The out-of-distribution gate on a real chest X-ray model: fitted at the end of training, in the bundle, scored by
both runtimes, shown in predict's CSV and JSON, and said to be absent on bundles without one."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.config import config_from_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kermany(shared_data: Path) -> Path:
    root = shared_data / "kermany_chestxray_224"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture(scope="module")
def chest_bundle(tmp_path_factory, kermany: Path) -> Path:
    """A small paediatric chest X-ray model (Kermany, 64 px, 400 images): the reference workload, made quick."""
    import medlens

    out = tmp_path_factory.mktemp("ood")
    cfg = config_from_dict({
        "seed": 0,
        "data": {"kind": "folder", "root": str(kermany), "image_size": 64, "channels": 1, "batch_size": 32,
                 "max_samples": 400, "augment": "none", "split": {"method": "stratified", "val_fraction": 0.2, "test_fraction": 0.2}},
        "model": {"backbone": "resnet10t"},
        "trainer": {"max_epochs": 2, "progress_bar": False, "channels_last": False, "precision": "32"},
        "output": {"dir": str(out), "name": "chest", "overwrite": True},
    })
    return medlens.train(cfg).bundle_dir


def _chest_images(root: Path, n: int) -> list[str]:
    return [str(f) for f in sorted((root / "test").rglob("*.jpeg"))[::7][:n]]


def test_the_gate_is_fitted_and_lives_in_the_bundle(chest_bundle: Path) -> None:
    from medlens.bundle import read_manifest

    m = read_manifest(chest_bundle)
    assert (chest_bundle / "ood.safetensors").is_file() and m.ood["method"] == "mahalanobis"
    assert m.ood["features"] == "stages" and m.ood["segments"][-1] == 512 and sum(m.ood["segments"]) == m.ood["feature_dim"]
    assert 0.9 <= m.ood["val_pass_rate"] <= 1.0 and m.ood["feature_dim"] > 0 and m.ood["threshold"] > 0
    test = m.metrics["test"]["ood"]  # in-distribution test images it flags: about 5 %
    assert test["n"] > 50 and test["flagged_fraction"] <= 0.2


def test_a_dermoscopy_photo_is_flagged_and_chest_xrays_mostly_pass(chest_bundle: Path, shared_data: Path, kermany: Path) -> None:
    from medlens.inference import Predictor

    p = Predictor.from_bundle(chest_bundle)
    skin = sorted((shared_data / "ham10000_subset100" / "images").glob("*.jpg"))[:20]
    preds = p.predict([str(f) for f in skin])
    assert sum(pr.ood for pr in preds) >= 12, [pr.ood_score for pr in preds]  # most dermoscopy photos are flagged
    preds = [pr for pr in preds if pr.ood]
    assert "OUTSIDE THE TRAINING DISTRIBUTION" in p.task.summary_line(preds[0], p.manifest)
    assert preds[0].probabilities  # the decision is still given, marked
    chest = p.predict(_chest_images(kermany, 60))  # unseen paediatric chest X-rays of the official test split
    assert sum(pr.ood for pr in chest) <= 15


def test_onnx_scores_the_gate_like_torch_and_the_csv_and_json_carry_it(chest_bundle: Path, shared_data: Path, kermany: Path,
                                                                        tmp_path: Path) -> None:
    import medlens
    from medlens.inference import Predictor
    from medlens.inference.onnx import OnnxPredictor

    imgs = _chest_images(kermany, 8) + [str(f) for f in sorted((shared_data / "ham10000_subset100" / "images").glob("*.jpg"))[:6]]
    a = Predictor.from_bundle(chest_bundle).predict(imgs)
    medlens.export_onnx(chest_bundle, tmp_path / "onnx")
    b = OnnxPredictor.from_bundle(tmp_path / "onnx").predict(imgs)
    assert np.allclose([x.ood_score for x in a], [x.ood_score for x in b], atol=1e-3)
    assert [x.ood for x in a] == [x.ood for x in b]
    out = tmp_path / "p.csv"
    medlens.predict(chest_bundle, imgs[-6:], out=out)  # the dermoscopy photos
    rows = list(csv.DictReader(out.open()))
    assert [r["ood"] for r in rows] == [str(x.ood).lower() for x in a[-6:]] and "true" in [r["ood"] for r in rows]
    assert np.allclose([float(r["ood_score"]) for r in rows], [x.ood_score for x in a[-6:]], atol=1e-4)
    p = Predictor.from_bundle(chest_bundle)
    rec = p.task.record(next(x for x in a[-6:] if x.ood), p.manifest)
    assert rec["ood"] is True and rec["ood_score"] > rec["ood_threshold"] and "not reliable" in rec["ood_note"]
    json.dumps(rec)


def test_a_bundle_without_a_gate_says_so_and_a_tampered_gate_is_refused(chest_bundle: Path, tmp_path: Path, kermany: Path) -> None:
    from medlens.bundle import MANIFEST, BundleError
    from medlens.inference import Predictor

    old = Path(shutil.copytree(chest_bundle, tmp_path / "old"))
    m = json.loads((old / MANIFEST).read_text())
    m.pop("ood")
    (old / MANIFEST).write_text(json.dumps(m))
    (old / "ood.safetensors").unlink()
    p = Predictor.from_bundle(old)
    pr = p.predict(_chest_images(kermany, 1))[0]
    assert pr.ood is None and "no out-of-distribution gate" in p.task.record(pr, p.manifest)["ood_note"]
    bad = Path(shutil.copytree(chest_bundle, tmp_path / "bad"))
    data = bytearray((bad / "ood.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "ood.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="ood.safetensors: checksum does not match"):
        Predictor.from_bundle(bad)
    # a gate fitted on other stage features (an earlier definition) is refused by name, not scored wrongly
    from medlens.ood import fit_detector

    other = Path(shutil.copytree(chest_bundle, tmp_path / "other"))
    segs = [64, 64, 128, 256, 512]
    rng = np.random.default_rng(0)
    rec = fit_detector(rng.normal(size=(300, 1024)), rng.normal(size=(50, 1024)), segments=segs).save(other)
    m = json.loads((other / MANIFEST).read_text())
    m["ood"] = rec
    (other / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"fitted on stage features \[64, 64, 128, 256, 512\], this version of medlens reads"):
        Predictor.from_bundle(other)


def test_ood_options_act_and_are_refused_where_they_cannot(tmp_path: Path) -> None:
    from medlens.ood import fit_detector
    from medlens.tasks import get_task

    rng = np.random.default_rng(0)
    tr, va = rng.normal(size=(300, 16)), rng.normal(size=(100, 16))
    knn, maha = fit_detector(tr, va, "knn", 10), fit_detector(tr, va, "mahalanobis")
    assert set(knn.arrays) == {"bank"} and set(maha.arrays) == {"mean", "precision"}
    assert fit_detector(tr, va, "knn", 1).threshold != knn.threshold  # ood.k
    assert fit_detector(tr, va, "knn", 10, val_pass=0.8).threshold < knn.threshold  # ood.val_pass
    assert len(fit_detector(tr, va, "knn", 10, max_bank=50).arrays["bank"]) == 50  # ood.max_train
    # ood.features acts through the config: the pooled vector alone, or the stages beside it (the default)
    import medlens
    from medlens.bundle import read_manifest
    from tests.conftest import tiny_config

    for features in ("penultimate", "stages"):
        raw = tiny_config(tmp_path / features, {"kind": "synthetic", "num_samples": 48, "image_size": 16, "channels": 1},
                          ood={"features": features})
        rec = read_manifest(medlens.train(config_from_dict(raw)).bundle_dir).ood
        assert rec["features"] == features
        assert (rec["segments"], rec["feature_dim"]) == (([], 512) if features == "penultimate" else (rec["segments"], sum(rec["segments"])))
        assert features == "penultimate" or len(rec["segments"]) > 2
    cfg = config_from_dict({"data": {"kind": "synthetic", "task": "anomaly"}, "ood": {"method": "knn"},
                            "task_options": {"normal_label": "negative"}})
    with pytest.raises(ValueError, match="ood.method: an out-of-distribution gate cannot act for task 'anomaly'"):
        get_task("anomaly").validate_config(cfg)


def test_the_server_flags_a_dermoscopy_photo_and_publishes_its_gate(chest_bundle: Path, shared_data: Path) -> None:
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app

    skin = sorted((shared_data / "ham10000_subset100" / "images").glob("*.jpg"))[:20]
    with TestClient(create_app(chest_bundle)) as client:
        assert client.get("/v1/model").json()["ood"]["method"] == "mahalanobis"
        files = [("files", (f.name, f.read_bytes(), "image/jpeg")) for f in skin]
        r = client.post("/v1/predict", files=files)
        assert r.status_code == 200, r.text
        recs = r.json()["predictions"]
        assert sum(bool(x["ood"]) for x in recs) >= 12 and all(x["ood_score"] is not None for x in recs)
        flagged = next(x for x in recs if x["ood"])
        assert "not reliable" in flagged["ood_note"] and flagged["findings"]  # the finding is still shown, marked
