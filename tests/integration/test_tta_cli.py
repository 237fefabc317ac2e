"""evaluate/predict --tta PRESET on a trained bundle: the preset is used and recorded; a bad preset is one line."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medlens.cli import app
from medlens.config import config_from_dict
from medlens.inference import Predictor
from medlens.training import train


def test_evaluate_and_predict_with_tta_presets(tmp_path) -> None:
    cfg = config_from_dict({
        "seed": 0, "data": {"kind": "synthetic", "num_samples": 60, "image_size": 16, "channels": 1, "batch_size": 16,
                            "augment": "none", "num_workers": 0},
        "model": {"backbone": "resnet10t", "small_input": False},
        "trainer": {"max_epochs": 1, "progress_bar": False, "tta": "flips"},
        "output": {"dir": str(tmp_path / "runs"), "name": "t"},
    })
    res = train(cfg)
    r = CliRunner().invoke(app, ["evaluate", str(res.bundle_dir), "--split", "val", "--tta", "d4"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((res.bundle_dir / "manifest.json").read_text())
    rec = manifest["metrics"]["evaluations"]["val_tta"]
    assert rec["tta"] == "d4" and rec["split"] == "val"  # the preset is recorded with the result
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)).save(img)
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", str(res.bundle_dir), str(img), "--tta", "d4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = float(out.read_text().splitlines()[1].split(",")[2])  # source, prob_<negative>, prob_<positive>, ...
    want = Predictor.from_bundle(res.bundle_dir, tta="d4").predict([str(img)])[0].probabilities
    assert abs(got - list(want.values())[-1]) < 1e-5
    bad = CliRunner().invoke(app, ["predict", str(res.bundle_dir), str(img), "--tta", "d8"])
    assert bad.exit_code == 2 and "valid: none, hflip, flips, d4" in bad.output and "Traceback" not in bad.output
