"""The per-epoch console line (EMA numbers, threshold, LR) and the LR reaching the CSV tracker."""

from __future__ import annotations

import csv
import logging

from medlens.engine.callbacks import format_epoch_summary, one_based_epoch_text
from medlens.engine.fit import fit
from medlens.tasks import get_task
from medlens.tasks.classification.options import ClassificationOptions
from tests.unit.engine._tiny import tiny_cfg, tiny_loaders, tiny_module


def test_three_epoch_ema_run_logs_one_summary_line_per_epoch_and_lr_reaches_csv(tmp_path, caplog) -> None:
    cfg = tiny_cfg(tmp_path, optim={"ema": True, "ema_decay": 0.9}, trainer={"max_epochs": 3}, tracking={"backends": ["csv"]})
    space, train_loader, val_loader = tiny_loaders()
    module = tiny_module(cfg, space)
    run_dir = tmp_path / "runs" / "t"
    with caplog.at_level(logging.INFO, logger="medlens.train"):
        task = get_task(space.task)
        res = fit(cfg, module, train_loader, val_loader, run_dir, ("auroc_macro", "max"),
                  epoch_line=lambda row: task.epoch_line(row, task.options(cfg)))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [ln.split(" |")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], lines
    for ln, row in zip(lines, res.history, strict=True):
        assert "train loss" in ln and "val loss" in ln and " AUROC " in ln and "thr " in ln and "(max-F1)" in ln
        assert "EMA acc@0.5" in ln and "EMA-raw AUROC" in ln and "lr " in ln
        gap = row["val/ema_auroc_macro"] - row["val/raw_auroc_macro"]
        assert f"(EMA-raw AUROC {gap:+.4f})" in ln  # the gap is the logged values' difference
        assert f"thr {row['val/threshold_f1']:.4f}" in ln
        assert f"lr {row['lr']:.2e}" in ln
    # the learning rate is logged per epoch through the Lightning loggers: the CSV tracker has an lr column
    metrics_csv = next(run_dir.rglob("metrics.csv"))
    rows = list(csv.DictReader(metrics_csv.open()))
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert len(lrs) == 3 and lrs[0] > lrs[-1] > 0  # cosine schedule: it falls
    assert any(r.get("val/ema_accuracy") for r in rows) and any(r.get("val/raw_f1_macro") for r in rows)


def test_summary_threshold_follows_the_method_and_epoch_text_counts_from_one() -> None:
    row = {"epoch": 0, "val/loss": 0.5, "val/threshold_f1": 0.3, "val/threshold_youden": 0.6, "val/accuracy": 0.7}
    binary = get_task("binary")
    assert "thr 0.6000 (youden)" in binary.epoch_line(row, ClassificationOptions(threshold_method="youden"))
    assert "thr 0.3 (fixed)" in binary.epoch_line(row, ClassificationOptions(threshold_method="fixed", fixed_threshold=0.3))
    assert "acc@0.5 0.7000" in binary.epoch_line(row, ClassificationOptions())  # accuracy at 0.5 says so
    line = format_epoch_summary(row, 1, binary.epoch_line(row, ClassificationOptions()))
    assert line.startswith("epoch 1/1 | val loss 0.5000 | val acc@0.5")
    assert one_based_epoch_text(0, 1) == "Epoch 1/1"  # Lightning's own bar said "Epoch 0/0"
