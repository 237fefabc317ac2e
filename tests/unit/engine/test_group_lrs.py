"""optim.backbone_lr different from optim.lr: both rates reach the console line, history.csv and the trackers."""

from __future__ import annotations

import csv
import logging

import pytest

from medlens.config import config_from_dict
from medlens.engine.callbacks import format_epoch_summary
from tests.conftest import tiny_config


def test_backbone_and_head_learning_rates_are_both_logged(tmp_path, caplog):
    from medlens.training import train

    raw = tiny_config(tmp_path, {"kind": "synthetic", "num_samples": 40, "image_size": 16, "channels": 1},
                      optim={"lr": 3e-3, "backbone_lr": 3e-4, "scheduler": "none"},
                      trainer={"max_epochs": 1, "calibrate": False}, tracking={"backends": ["csv"]})
    with caplog.at_level(logging.INFO, logger="medlens.train"):
        run_dir = train(config_from_dict(raw)).run_dir
    with open(run_dir / "history.csv", newline="") as f:
        hist = list(csv.DictReader(f))
    assert float(hist[0]["lr"]) == pytest.approx(3e-3) and float(hist[0]["lr/backbone"]) == pytest.approx(3e-4)
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:  # the csv tracker
        rows = [r for r in csv.DictReader(f) if r.get("lr/backbone")]
    assert [float(r["lr/backbone"]) for r in rows] == pytest.approx([3e-4]) and float(rows[0]["lr"]) == pytest.approx(3e-3)
    assert any("lr head 3.00e-03 backbone 3.00e-04" in r.getMessage() for r in caplog.records)


def test_one_rate_is_shown_once_when_backbone_and_head_agree():
    row = {"epoch": 0, "val/loss": 0.5, "lr": 1e-3}
    assert format_epoch_summary(row, 2).endswith("| lr 1.00e-03")
    assert format_epoch_summary({**row, "lr/backbone": 1e-4}, 2).endswith("| lr head 1.00e-03 backbone 1.00e-04")
