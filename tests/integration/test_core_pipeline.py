"""End to end on real data: train -> bundle -> evaluate -> predict, and bad input through the CLI.

The round-trip test is the contract of the bundle: ``medlens predict`` on the test images (written as PNG
files) gives exactly the probabilities and decisions ``medlens evaluate`` scored.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from medlens.cli import app
from medlens.config import config_from_dict
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def stderr_lines(result) -> list[str]:
    """stderr's lines that are not the library's log records (one line each, prefixed, when stderr is not a terminal)."""
    return [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith(("DEBUG: ", "INFO: ", "WARNING: "))]


@pytest.fixture(scope="module")
def trained(pneumonia_npz: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny PneumoniaMNIST run: 600 samples (official split shares), resnet10t, 1 epoch (a few seconds)."""
    from medlens.training import train

    tmp = tmp_path_factory.mktemp("core")
    raw = tiny_config(tmp, {
        "kind": "medmnist", "path": str(pneumonia_npz), "image_size": 28, "channels": 1, "max_samples": 600,
        "batch_size": 64,
    }, model={"small_input": False})  # the stock stem: ~16x cheaper at 28 px, enough to learn something
    result = train(config_from_dict(raw))
    return result


def test_run_folder_layout(trained) -> None:
    r = trained
    for name in ("config.yaml", "metrics.json", "history.csv", "bundle/model.safetensors", "bundle/manifest.json"):
        assert (r.run_dir / name).is_file(), name
    assert not list(r.run_dir.glob(".*tmp*"))
    saved = yaml.safe_load((r.run_dir / "config.yaml").read_text())
    assert saved["data"]["max_samples"] == 600 and saved["model"]["backbone"] == "resnet10t"
    manifest = json.loads((r.bundle_dir / "manifest.json").read_text())
    assert manifest["label_names"] == ["normal", "pneumonia"] and manifest["task"] == "binary"
    assert manifest["preprocessing"] == {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]}
    assert len(manifest["thresholds"]) == 1
    assert manifest["extra"]["data_summary"]["splits"] == {"train": 482, "val": 54, "test": 64}
    test = r.metrics["test"]
    assert 0.5 < test["auroc_macro"] <= 1.0  # learned something in one tiny epoch


def test_predict_equals_evaluate_round_trip(trained, tmp_path: Path) -> None:
    """Test images as PNG files -> `medlens predict` CSV == `medlens evaluate` probabilities and decisions."""
    from medlens.evaluation import dataset_splits, evaluate

    cfg = config_from_dict(json.loads((trained.bundle_dir / "manifest.json").read_text())["config"])
    table, splits = dataset_splits(cfg)
    test = table.subset(splits.test)
    files = []
    for i, img in enumerate(test.images):
        p = tmp_path / "png" / f"{i:04d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(p)
        files.append(p)

    ev = evaluate(trained.bundle_dir, split="test")
    assert ev.ids == [str(i) for i in test.ids]

    out = tmp_path / "preds.csv"
    res = cli("predict", trained.bundle_dir, *files, "--out", out)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [str(f) for f in files]
    assert all(r["error"] == "" for r in rows)
    got = np.array([float(r["prob_pneumonia"]) for r in rows])
    np.testing.assert_allclose(got, ev.probs[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose([float(r["prob_normal"]) for r in rows], 1 - ev.probs[:, 0], rtol=0, atol=1e-6)

    thr = json.loads((trained.bundle_dir / "manifest.json").read_text())["thresholds"][0]
    decided = np.where(ev.probs[:, 0] >= thr, "pneumonia", "normal")
    assert [r["predicted"] for r in rows] == decided.tolist()
    # ... and those decisions are the ones the metrics counted
    per = ev.metrics["per_label"]["pneumonia"]
    y = test.targets[:, 1] == 1
    assert per["tp"] == int(((decided == "pneumonia") & y).sum())
    assert per["fp"] == int(((decided == "pneumonia") & ~y).sum())
    # and evaluate re-scores exactly what training reported for the test split
    assert ev.metrics["auroc_macro"] == pytest.approx(trained.metrics["test"]["auroc_macro"], abs=1e-12)


def test_predict_python_api_on_arrays_matches(trained) -> None:
    """The in-memory path (arrays, no files) gives the same numbers as the file path."""
    from medlens import predict
    from medlens.evaluation import evaluate

    ev = evaluate(trained.bundle_dir, split="test")
    cfg = config_from_dict(json.loads((trained.bundle_dir / "manifest.json").read_text())["config"])
    from medlens.evaluation import dataset_splits

    table, splits = dataset_splits(cfg)
    preds = predict(trained.bundle_dir, list(table.images[splits.test]))
    np.testing.assert_allclose([p.probabilities["pneumonia"] for p in preds], ev.probs[:, 0], atol=1e-6, rtol=0)


def test_evaluate_cli_json(trained, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    res = cli("evaluate", trained.bundle_dir, "--split", "test", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert m["split"] == "test"
    for k in ("auroc_macro", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix", "per_label"):
        assert k in m, k
    per = m["per_label"]["pneumonia"]
    for k in ("auroc", "precision", "recall", "f1", "tp", "fp", "tn", "fn"):
        assert k in per, k
    assert per["tp"] + per["fp"] + per["tn"] + per["fn"] == 64
    assert m["confusion_matrix"] == [[per["tn"], per["fp"]], [per["fn"], per["tp"]]]
    assert 0.0 <= m["auroc_macro"] <= 1.0
    assert json.loads(res.stdout)["auroc_macro"] == m["auroc_macro"]  # --json: stdout is JSON only
    table = cli("evaluate", trained.bundle_dir, "--split", "test", "--no-record")
    assert table.exit_code == 0 and "n=" in table.stdout and "AUROC" in table.stdout  # the default: a table a person reads
    # the val split too, from the config saved in the bundle
    assert cli("evaluate", trained.bundle_dir, "--split", "val").exit_code == 0
    bad = cli("evaluate", trained.bundle_dir, "--split", "holdout")
    assert bad.exit_code == 2 and len(stderr_lines(bad)) == 1


def test_predict_unreadable_and_missing_images(trained, tmp_path: Path) -> None:
    good = tmp_path / "ok.png"
    Image.fromarray(np.full((40, 30), 90, np.uint8)).save(good)  # other size: resized by the one transform
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "p.csv"
    res = cli("predict", trained.bundle_dir, good, broken, tmp_path / "missing.png", "--out", out)
    assert res.exit_code == 2  # some inputs failed: non-zero unless --keep-going (the CSV is still written)
    assert cli("predict", trained.bundle_dir, good, broken, "--keep-going").exit_code == 0
    rows = {Path(r["source"]).name: r for r in csv.DictReader(out.open())}
    assert rows["ok.png"]["error"] == "" and rows["ok.png"]["predicted"] in ("normal", "pneumonia")
    assert "not a readable image" in rows["broken.png"]["error"]
    assert "not found" in rows["missing.png"]["error"]
    only_bad = cli("predict", trained.bundle_dir, tmp_path / "missing.png")
    assert only_bad.exit_code == 2


# ------------------------------------------------------------------ bad input: exit code 2, one line
def _write_cfg(tmp_path: Path, data: dict, **sections) -> Path:
    raw = tiny_config(tmp_path, data, **sections)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _png(p: Path, value: int = 100) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(p)
    return p


def _assert_one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = stderr_lines(res)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in res.output
    return lines[0]


def test_cli_typo_key(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, {"kind": "synthetic", "num_samples": 20})
    raw["trainer"]["max_epoch"] = 3
    p = tmp_path / "typo.yaml"
    p.write_text(yaml.safe_dump(raw))
    _assert_one_line_error(cli("train", p), "trainer.max_epoch", str(p))
    _assert_one_line_error(cli("train", p.with_name("absent.yaml")), "absent.yaml")
    ok = tmp_path / "ok.yaml"
    del raw["trainer"]["max_epoch"]
    ok.write_text(yaml.safe_dump(raw))
    _assert_one_line_error(cli("train", ok, "--set", "optim.lrr=1"), "optim.lrr")
    assert not (tmp_path / "runs").exists()


def test_cli_missing_image(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png")
    (tmp_path / "l.csv").write_text("path,label\nimg/0.png,a\nimg/1.png,b\nimg/404.png,a\nimg/3.png,b\n")
    p = _write_cfg(tmp_path, {"kind": "csv", "path": "l.csv", "label_column": "label", "image_size": 28, "channels": 1})
    _assert_one_line_error(cli("train", p), "row 4", "404.png")
    assert not (tmp_path / "runs" / "t" / "bundle").exists()


def test_cli_unknown_label(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "img" / f"{i}.png")
    (tmp_path / "l.csv").write_text("path,label\nimg/0.png,normal\nimg/1.png,pneumonia\nimg/2.png,pneumonai\n")
    p = _write_cfg(tmp_path, {
        "kind": "csv", "path": "l.csv", "label_column": "label", "label_names": ["normal", "pneumonia"], "image_size": 28,
    })
    # a label outside data.label_names is filtered (counted and said once, naming the row), not silently kept
    import logging

    from medlens.config import load_config
    from medlens.data.readers import read_dataset

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("medlens").addHandler(handler)
    try:
        table = read_dataset(load_config(p).data)
    finally:
        logging.getLogger("medlens").removeHandler(handler)
    assert len(table) == 2
    said = [r.getMessage() for r in records if "pneumonai" in r.getMessage()]
    assert len(said) == 1 and "l.csv" in said[0] and "row 4" in said[0], said


def test_cli_empty_class(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "data" / "normal" / f"{i}.png")
    (tmp_path / "data" / "pneumonia").mkdir()
    p = _write_cfg(tmp_path, {"kind": "folder", "root": "data", "image_size": 28})
    _assert_one_line_error(cli("train", p), "'pneumonia'")
    assert not (tmp_path / "runs" / "t" / "bundle").exists()


def test_crash_mid_training_leaves_no_bundle(tmp_path: Path) -> None:
    """An unreadable image found while training (no pre-decoding) fails the run: one line, no bundle."""
    rng = np.random.default_rng(0)
    for c in ("normal", "pneumonia"):
        for i in range(24):
            _png(tmp_path / "data" / c / f"{i:02d}.png", int(rng.integers(0, 255)))
    (tmp_path / "data" / "pneumonia" / "07.png").write_bytes(b"truncated garbage")
    p = _write_cfg(
        tmp_path,
        {"kind": "folder", "root": "data", "image_size": 28, "channels": 1, "cache_images": False, "num_workers": 0, "batch_size": 8},
    )
    res = cli("train", p)
    _assert_one_line_error(res, "07.png")
    run = tmp_path / "runs" / "t"
    assert not (run / "bundle").exists()
    assert not [x for x in run.iterdir() if x.name.startswith(".bundle")]
    assert not (run / "metrics.json").exists()
