"""history.csv: one row per epoch, each with that epoch's own mean training loss, its learning rate and val metrics."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import lightning as L
import pytest

from medlens.training import train
from tests.unit.engine._tiny import tiny_cfg

EPOCHS = 3


class StepLosses(L.Callback):
    """Every training step's loss and batch size, by epoch (what the history's train/loss must average)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self.start_lr: dict[int, float] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start_lr[trainer.current_epoch] = float(trainer.optimizers[0].param_groups[-1]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.by_epoch[trainer.current_epoch].append((float(loss), len(batch)))

    def mean(self, epoch: int) -> float:
        steps = self.by_epoch[epoch]
        return sum(v * n for v, n in steps) / sum(n for _, n in steps)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    rec = StepLosses()
    cfg = tiny_cfg(tmp_path_factory.mktemp("hist"), trainer={"max_epochs": EPOCHS}, optim={"lr": 3e-2, "scheduler": "cosine"})
    result = train(cfg, callbacks=[rec])
    with open(result.run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rec, rows, result


def test_one_row_per_epoch_in_order(run) -> None:
    _, rows, result = run
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert len(result.history) == EPOCHS


def test_each_epochs_train_loss_is_the_mean_of_its_own_steps(run) -> None:
    rec, rows, _ = run
    assert set(rec.by_epoch) == set(range(EPOCHS))
    for e in range(EPOCHS):
        assert float(rows[e]["train/loss"]) == pytest.approx(rec.mean(e), rel=1e-5)
    # not shifted by one: epoch 0's row is not epoch 1's mean (the losses of a learning run differ)
    assert rec.mean(0) != pytest.approx(rec.mean(1), rel=1e-3)
    assert float(rows[0]["train/loss"]) != pytest.approx(rec.mean(1), rel=1e-3)


def test_lr_column_follows_the_schedule_and_val_metrics_are_present(run) -> None:
    rec, rows, _ = run
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([rec.start_lr[e] for e in range(EPOCHS)])  # the rate the epoch trained with
    assert all(lr > 0 for lr in lrs)
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]  # cosine decays within the run
    for r in rows:
        assert r["val/loss"] != "" and r["val/auroc_macro"] != ""


def test_history_csv_is_the_bundles_history(run) -> None:
    _, rows, result = run
    from medlens.bundle import load_bundle

    hist = load_bundle(Path(result.bundle_dir)).manifest.history
    assert [h["epoch"] for h in hist] == [int(r["epoch"]) for r in rows]
    assert [h["train/loss"] for h in hist] == pytest.approx([float(r["train/loss"]) for r in rows])
