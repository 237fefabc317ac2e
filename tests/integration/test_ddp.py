"""Two-process DDP on CPU (gloo) reaches the validation metrics of one process.

The comparison is exact up to float rounding, by construction:
* per-process batch 16 on 2 processes = batch 32 on one: DDP averages the two processes' gradients of their
  batch means, which is the gradient of the mean over the 32 rows;
* the training sampler gives process r every 2nd row of the single-process (seed, epoch) order, so each step
  sees the same 32 rows (``engine.distributed.DistributedEpochOrder``);
* the backbone has GroupNorm, not BatchNorm, so no statistic depends on how a batch is split;
* validation has an odd number of images (63): DistributedSampler pads it to 64 with a repeat, which the
  whole-set gathering must drop, or loss and metrics differ from the single process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medlens.config import config_from_dict
from tests.conftest import tiny_config


def _history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.heavy  # 51 s: two processes, each importing torch and training
def test_two_process_ddp_reaches_single_process_validation_metrics(tmp_path, pneumonia_npz):
    from medlens.bundle import read_manifest
    from medlens.training import train

    src = np.load(pneumonia_npz)
    sizes = {"train": 512, "val": 63, "test": 32}  # 512 = 16 steps of 2 x 16; 63 is odd on purpose
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(npz, **{f"{s}_{k}": src[f"{s}_{k}"][:n] for s, n in sizes.items() for k in ("images", "labels")})
    raw = tiny_config(
        tmp_path, {"kind": "medmnist", "path": str(npz), "image_size": 28, "channels": 1, "batch_size": 32},
        model={"backbone": "test_efficientnet_gn"}, optim={"lr": 1e-2},
        trainer={"max_epochs": 2, "accelerator": "cpu", "calibrate": False, "channels_last": False}, output={"name": "single"},
    )
    single = train(config_from_dict(raw))

    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    sets = ["trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=16", "output.name=ddp"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    proc = subprocess.run(
        [sys.executable, "-m", "medlens.cli", "train", str(cfg_path), *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ddp_dir = tmp_path / "runs" / "ddp"

    # it really ran as two processes
    launch = json.loads((ddp_dir / "environment.json").read_text())["launch"]
    assert launch["world_size"] == 2 and launch["strategy_class"] == "DDPStrategy"
    assert launch["global_batch_size"] == 32

    # per-epoch validation during training (gathered over both processes, padding repeat dropped)
    h1, h2 = _history(single.run_dir), _history(ddp_dir)
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2, strict=True):
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=1e-4)
        # one swapped pair of the 45 x 18 positive/negative pairs moves AUROC by 0.0012
        assert b["val/auroc_macro"] == pytest.approx(a["val/auroc_macro"], abs=2e-3)
    assert h2[-1]["val/loss"] < h2[0]["val/loss"] + 0.05  # it trained

    # final evaluation and thresholds (rank 0, over the whole validation and test sets)
    m1, m2 = single.metrics, json.loads((ddp_dir / "metrics.json").read_text())
    assert m2["val"]["n"] == m1["val"]["n"] == 63 and m2["test"]["n"] == 32
    for split in ("val", "test"):
        for k in ("auroc_macro", "average_precision_macro", "brier"):
            assert m2[split][k] == pytest.approx(m1[split][k], abs=2e-3), (split, k)
    t1, t2 = read_manifest(single.bundle_dir).thresholds, read_manifest(ddp_dir / "bundle").thresholds
    assert t2 == pytest.approx(t1, abs=1e-3)
