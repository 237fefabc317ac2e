"""tracking.backends: [wandb] in offline mode: a real W&B run is written locally (in WANDB_DIR when it is set) with the
per-epoch metrics and lr."""

from __future__ import annotations

import json
import struct
import time

import pytest

from medlens.engine.fit import fit
from tests.unit.engine._tiny import tiny_cfg, tiny_loaders, tiny_module


def test_wandb_offline_run_records_epoch_metrics_and_lr(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    cfg = tiny_cfg(tmp_path, trainer={"max_epochs": 2}, tracking={"backends": ["csv", "wandb"], "wandb_project": "medlens-test"})
    space, train_loader, val_loader = tiny_loaders()
    run_dir = tmp_path / "runs" / "t"
    res = fit(cfg, tiny_module(cfg, space), train_loader, val_loader, run_dir, ("auroc_macro", "max"))
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs, "no offline W&B run folder was written in WANDB_DIR"
    assert not list(run_dir.rglob("offline-run-*"))  # WANDB_DIR is honoured: not the run's logs/ folder
    deadline = time.monotonic() + 20
    while True:  # wandb's writer process may still be flushing the last records after finish()
        rows = _history(next(runs[0].glob("run-*.wandb")))
        if sum("lr" in r for r in rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lrs = [r["lr"] for r in rows if "lr" in r]
    aurocs = [r["val/auroc_macro"] for r in rows if "val/auroc_macro" in r]
    # trackers get the LR each epoch starts with (engine.module logs "lr" at epoch start): 3e-3, then cosine-halved
    assert res.history[0]["lr"] == pytest.approx(cfg.optim.lr)  # history, like the trackers, records the LR an epoch starts with
    assert lrs == pytest.approx([res.history[0]["lr"], res.history[1]["lr"]], rel=1e-5) and lrs[1] < lrs[0]
    assert aurocs == pytest.approx([h["val/auroc_macro"] for h in res.history], rel=1e-5)


def _history(path) -> list[dict]:
    """The history rows of an offline W&B run file (its own record format, read with wandb's reader)."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in _log_records(path.read_bytes()):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def _log_records(data: bytes, block: int = 32768) -> list[bytes]:
    """Records of W&B's LevelDB-style log: a 7-byte file header, then per record crc(4) length(2) type(1) + payload,
    split over 32 KiB blocks (type 1 full, 2 first, 3 middle, 4 last)."""
    out, buf, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            buf = payload
        elif kind == 3:
            buf += payload
        elif kind == 4:
            out.append(buf + payload)
            buf = b""
        elif kind == 0:  # zero padding to the block end
            pos += block - pos % block if pos % block else 0
    return out
