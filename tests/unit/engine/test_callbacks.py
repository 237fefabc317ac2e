"""Backbone freezing by epoch, and atomic checkpoint writes."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from medlens.engine.callbacks import AtomicCheckpointIO, FreezeBackbone
from medlens.engine.trainer import build_trainer, monitor_for
from tests.unit.engine._tiny import tiny_cfg, tiny_loaders, tiny_module


class _Snapshot(L.Callback):
    """Per epoch: requires_grad of backbone/head at the first batch, and whether each changed during the epoch."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            m = pl_module.model
            self._before = {n: p.detach().clone() for n, p in m.named_parameters()}
            self._bn = {n: b.detach().clone() for n, b in m.named_buffers() if n.endswith("running_mean")}
            self.rows.append({
                "epoch": trainer.current_epoch,
                "backbone_grad": {p.requires_grad for p in m.backbone.parameters()},
                "head_grad": {p.requires_grad for p in m.head.parameters()},
                "backbone_training": m.backbone.training,
            })

    def on_train_epoch_end(self, trainer, pl_module):
        m = pl_module.model
        row = self.rows[-1]
        row["backbone_changed"] = any(not torch.equal(p, self._before[n]) for n, p in m.named_parameters() if n.startswith("backbone."))
        row["head_changed"] = any(not torch.equal(p, self._before[n]) for n, p in m.named_parameters() if n.startswith("head."))
        row["bn_stats_changed"] = any(not torch.equal(b, self._bn[n]) for n, b in m.named_buffers() if n in self._bn)


def _fit(tmp_path, **optim):
    cfg = tiny_cfg(tmp_path, optim={"lr": 1e-2, **optim}, trainer={"max_epochs": 3})
    space, train_dl, val_dl = tiny_loaders(64)
    module = tiny_module(cfg, space)
    snap = _Snapshot()
    trainer, _ = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")), extra_callbacks=[snap])
    assert any(isinstance(c, FreezeBackbone) for c in trainer.callbacks) == bool(optim.get("freeze_epochs") or optim.get("freeze_backbone"))
    trainer.fit(module, train_dl, val_dl)
    return snap.rows


@pytest.mark.slow
def test_freeze_epochs_unfreezes_at_the_right_epoch(tmp_path):
    rows = _fit(tmp_path, freeze_epochs=2)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows[:2]:  # epochs 0 and 1: only the head learns, norm statistics untouched
        assert r["backbone_grad"] == {False} and r["head_grad"] == {True}
        assert not r["backbone_training"]
        assert not r["backbone_changed"] and not r["bn_stats_changed"] and r["head_changed"]
    last = rows[2]  # epoch 2: everything trains
    assert last["backbone_grad"] == {True} and last["backbone_training"]
    assert last["backbone_changed"] and last["bn_stats_changed"] and last["head_changed"]


@pytest.mark.slow
def test_freeze_backbone_keeps_it_frozen_for_the_whole_run(tmp_path):
    rows = _fit(tmp_path, freeze_backbone=True)
    assert all(r["backbone_grad"] == {False} and not r["backbone_changed"] for r in rows)
    assert all(r["head_changed"] for r in rows)


def test_freeze_schedule_and_lightning_train_mode_reset():
    cb = FreezeBackbone(epochs=1)
    assert [cb.frozen(e) for e in range(3)] == [True, False, False]
    assert FreezeBackbone(None).frozen(100)

    class FakeTrainer:
        current_epoch = 0

    class FakeModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.backbone = torch.nn.BatchNorm2d(2)

    m = FakeModule()
    cb.on_train_epoch_start(FakeTrainer(), m)
    m.train()  # what Lightning does after a (mid-epoch) validation run
    cb.on_train_batch_start(FakeTrainer(), m, None, 5)
    assert not m.model.backbone.training


def test_atomic_checkpoint_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    assert io.load_checkpoint(path)["epoch"] == 1

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_atomic_checkpoint_removes_temp_files_of_a_killed_writer(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    (d / ".last.ckpt.abc123.tmp").write_bytes(b"half")  # a process killed between write and rename
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, d / "last.ckpt")
    assert sorted(p.name for p in d.iterdir()) == ["last.ckpt"]
