"""Anomaly detection end to end on real data: normal-only training, the fitted threshold, evaluate/predict/CLI,
resume, and a folder dataset streamed from disk. Tiny autoencoders, 28 px, one or two epochs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medlens.cli import app
from medlens.config import config_from_dict, load_config
from tests.conftest import ROOT, tiny_config

ANOMALY_CONFIGS = sorted((ROOT / "configs").glob("anomaly_*.yaml"))


def _cfg(tmp_path: Path, source: dict, **sections):
    model = {"autoencoder": "reversed", "ae_depth": 2, "ae_width": 4, "latent_dim": 8, "anomaly_map": "ssim", "anomaly_fpr": 0.1}
    model.update(sections.pop("model", {}))
    trainer = {"max_epochs": 1, "progress_bar": False, **sections.pop("trainer", {})}
    data = {"task": "anomaly", "normal_label": "normal", "image_size": 28, "channels": 1, **source, **sections.pop("data", {})}
    raw = tiny_config(tmp_path, data,
                      model=model, optim={"loss": "mse_ssim", **sections.pop("optim", {})}, trainer=trainer, **sections)
    return config_from_dict(raw)


def _pneumonia(tmp_path, npz, **sections):
    return _cfg(tmp_path, {"kind": "medmnist", "path": str(npz), "max_samples": 500, "download": False}, **sections)


@pytest.mark.parametrize("path", ANOMALY_CONFIGS, ids=lambda p: p.name)
def test_shipped_anomaly_configs_load(path):
    from medlens.engine.trainer import monitor_for
    from medlens.tasks import get_task
    from medlens.tasks.anomaly import architecture_for_anomaly

    cfg = load_config(path)
    assert cfg.data.task == "anomaly" and cfg.task_options["normal_label"]
    arch = architecture_for_anomaly(cfg)
    assert arch["type"] in ("unet_ae", "reversed_ae", "patchcore")
    assert monitor_for(cfg, get_task("anomaly").default_monitor()) == ("loss", "min")  # early stopping / checkpoints on val reconstruction loss


def test_unet_skip_levels_come_from_the_config(tmp_path):
    from medlens.models import create_model
    from medlens.tasks.anomaly import architecture_for_anomaly

    src = {"kind": "synthetic", "num_samples": 20}
    assert architecture_for_anomaly(_cfg(tmp_path, src, model={"autoencoder": "unet", "ae_depth": 3}))["skip_levels"] == [2]
    arch = architecture_for_anomaly(_cfg(tmp_path, src, model={"autoencoder": "unet", "ae_depth": 3, "ae_skip_levels": [0, 2]}))
    assert create_model(arch).skip_levels == [0, 2]
    with pytest.raises(ValueError, match="reversed autoencoder has no skip"):
        architecture_for_anomaly(_cfg(tmp_path, src, model={"autoencoder": "reversed", "ae_skip_levels": [1]}))


@pytest.mark.slow
def test_train_on_normals_only_then_threshold_evaluate_predict(tmp_path, pneumonia_npz, monkeypatch):
    import medlens
    from medlens.inference import Predictor
    from medlens.tasks.anomaly.module import ReconstructionModule as ReconstructionTask

    seen: list[np.ndarray] = []
    check = ReconstructionTask.check_normal

    def spy(batch):
        seen.append(batch.targets.numpy().copy())
        check(batch)

    monkeypatch.setattr(ReconstructionTask, "check_normal", staticmethod(spy))
    cfg = _pneumonia(tmp_path, pneumonia_npz)
    result = medlens.train(cfg)

    # ---- no abnormal sample reached the training loader (and the split did contain some)
    seen_t = np.concatenate(seen)
    summary = result.data_summary
    assert summary["train_rows_left_out"] > 0
    assert len(seen_t) >= summary["train_rows"] - cfg.data.batch_size  # the loader really ran (drop_last)
    assert np.all(seen_t[:, 0] == 1) and np.all(seen_t[:, 1] == 0)

    # ---- the bundle: same format as classifiers, plus the anomaly section
    bundle = medlens.load_bundle(result.bundle_dir)
    m = bundle.manifest
    assert m.task == "anomaly" and m.label_names == ["normal", "pneumonia"]
    assert m.architecture["type"] == "reversed_ae"
    assert m.thresholds == [m.task_section["threshold"]] and m.task_section["error_map"] == "ssim"

    # ---- the threshold reproduces the chosen false-positive rate on the validation normals
    table, splits = _splits(cfg)
    val_normals = table.subset(splits.val[table.targets[splits.val, 0] == 1])
    scores = Predictor(bundle).predict_table(val_normals)[:, 0]
    n = len(scores)
    flagged = float(np.mean(scores >= m.thresholds[0]))
    assert flagged == pytest.approx(np.floor(0.1 * n + 1e-9) / n) == pytest.approx(m.task_section["val_normal_fpr"])

    # ---- evaluation through the metrics module, with CIs; evaluate() gives the same figures
    test = result.metrics["test"]
    for k in ("auroc", "average_precision", "f1", "sensitivity", "specificity", "threshold"):
        assert k in test
    assert test["ci"]["headline"]["auroc_macro"]["n_valid"] > 0
    again = medlens.evaluate(result.bundle_dir, split="test", record=False)
    assert again.metrics["auroc"] == pytest.approx(test["auroc"])

    # ---- medlens predict on PNG files gives the evaluated scores
    raw = np.load(pneumonia_npz)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(raw["test_images"][i]).save(p)
        paths.append(str(p))
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(app, ["predict", str(result.bundle_dir), *paths, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out)))
    expected = Predictor(bundle).predict_arrays([raw["test_images"][i] for i in range(3)])[:, 0]
    assert [float(x["anomaly_score"]) for x in rows] == pytest.approx(expected.tolist(), rel=1e-4)
    assert all(x["predicted"] in ("normal", "pneumonia") for x in rows)
    r = CliRunner().invoke(app, ["predict", str(result.bundle_dir), paths[0]])
    assert r.exit_code == 0 and "score=" in r.output, r.output


def _splits(cfg):
    from medlens.evaluation import dataset_splits

    return dataset_splits(cfg)


@pytest.mark.slow
def test_resume_continues_the_run(tmp_path, pneumonia_npz):
    import medlens

    cfg = _pneumonia(tmp_path, pneumonia_npz, data={"max_samples": 300}, model={"autoencoder": "unet", "anomaly_map": "mse"}, optim={"loss": "mse"})
    first = medlens.train(cfg)
    assert len(first.history) == 1
    last = first.run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    cfg2 = _pneumonia(tmp_path, pneumonia_npz, data={"max_samples": 300}, model={"autoencoder": "unet", "anomaly_map": "mse"}, optim={"loss": "mse"}, trainer={"max_epochs": 2}, output={"overwrite": False})
    second = medlens.train(cfg2, resume=str(last))
    assert [h["epoch"] for h in second.history] == [0, 1]
    assert medlens.load_bundle(second.bundle_dir).manifest.architecture["type"] == "unet_ae"


@pytest.mark.slow
def test_folder_dataset_streamed_from_disk(tmp_path, pneumonia_npz):
    """PNG files in root/<split>/<class>/, read lazily from disk (no image cache), labels named by folders."""
    import medlens
    from medlens.data.readers import read_dataset

    raw = np.load(pneumonia_npz)
    counts = {"train": (48, 12), "val": (12, 6), "test": (10, 10)}
    for split, (n_norm, n_abn) in counts.items():
        x, y = raw[f"{split}_images"], raw[f"{split}_labels"][:, 0]
        for cls, k, n in (("normal", 0, n_norm), ("pneumonia", 1, n_abn)):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for j, i in enumerate(np.flatnonzero(y == k)[:n]):
                Image.fromarray(x[i]).save(d / f"{j}.png")
    cfg = _cfg(tmp_path, {"kind": "folder", "root": str(tmp_path / "data"), "cache_images": False, "num_workers": 0, "batch_size": 16})
    table = read_dataset(cfg.data)
    assert not table.in_memory and table.label_space.names == ("normal", "pneumonia")
    result = medlens.train(cfg)
    assert result.data_summary["train_rows"] == 48 and result.data_summary["train_rows_left_out"] == 12
    assert result.metrics["test"]["n"] == 20
