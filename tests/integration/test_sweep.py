"""medlens train --sweep: a grid of ordinary runs, one folder each, a comparison table and sweep.csv."""

from __future__ import annotations

import csv

import pytest
import yaml

from medlens.config import ConfigError
from medlens.sweep import format_sweep_table, parse_sweeps, run_sweep


def test_sweep_two_lr_values_one_epoch_writes_runs_table_and_csv(tmp_path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "seed": 0,
        "data": {"kind": "synthetic", "num_samples": 80, "image_size": 16, "channels": 1, "batch_size": 16, "augment": "none",
                 "num_workers": 0},
        "model": {"backbone": "resnet10t", "small_input": False},
        "trainer": {"max_epochs": 1, "progress_bar": False, "calibrate": False},
        "output": {"dir": str(tmp_path / "runs")},
    }))
    res = run_sweep(cfg, ["optim.lr=1e-3,1e-2"])
    assert [r.name for r in res.runs] == ["tiny__lr=1e-3", "tiny__lr=1e-2"]
    for r in res.runs:
        assert (r.run_dir / "bundle" / "manifest.json").is_file()
        saved = yaml.safe_load((r.run_dir / "config.yaml").read_text())
        assert saved["optim"]["lr"] == float(r.values["optim.lr"])  # the swept value reached the run
        assert r.val is not None and r.val_n == 12 and r.test_n == 12 and r.metric == "auroc_macro"
    rows = list(csv.DictReader(res.csv_path.open()))
    assert res.csv_path == tmp_path / "runs" / "tiny-sweep" / "sweep.csv"
    assert [r["optim.lr"] for r in rows] == ["1e-3", "1e-2"] and "val auroc_macro" in rows[0] and "wall time s" in rows[0]
    text = format_sweep_table(res)
    assert "choose on validation" in text and res.best.name in text.splitlines()[-1]


def test_bad_sweep_items_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="section.key=value1,value2"):
        parse_sweeps(["optim.lr"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_sweeps(["optim.lr=1", "optim.lr=2"])
