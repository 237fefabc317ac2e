"""Resume: an interrupted run continued from its last checkpoint ends exactly like an uninterrupted one; a run
killed with SIGKILL leaves a last checkpoint that loads and resumes; the manifest says whether EMA weights won.

Tiny CPU runs on the synthetic reader (16 px, resnet10t with its stock stem), so they need no data files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medlens.bundle import load_bundle
from medlens.config import config_from_dict
from medlens.training import train
from tests._crash import CrashAt

pytestmark = pytest.mark.slow


def _raw(tmp_path: Path, name: str, **sections) -> dict:
    raw = {
        "seed": 3,
        "data": {"kind": "synthetic", "num_samples": 120, "image_size": 16, "channels": 1, "batch_size": 16,
                 "augment": "light", "sampler": "weighted"},
        "model": {"backbone": "resnet10t", "small_input": False, "drop_rate": 0.2},
        "optim": {"lr": 3e-3, "warmup_epochs": 0.5, "ema": True, "ema_decay": 0.9, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
                  "mix_prob": 0.5},
        # the memory format is pinned: `auto` times both layouts, and two separate runs may choose differently
        # (a resumed run reuses its own choice from the checkpoint)
        "trainer": {"max_epochs": 3, "progress_bar": False, "calibrate": True, "threshold_method": "youden", "channels_last": False},
        "output": {"dir": str(tmp_path / "runs"), "name": name, "overwrite": True},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return raw


def _weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.bundle_dir / "model.safetensors"))


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = train(config_from_dict(_raw(tmp_path, "full")))

    cfg = config_from_dict(_raw(tmp_path, "resumed"))
    with pytest.raises(RuntimeError, match="simulated crash at epoch 2"):
        train(cfg, callbacks=[CrashAt(2)])
    ckpt_dir = Path(cfg.output.dir) / "resumed" / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1
    resumed = train(config_from_dict(_raw(tmp_path, "resumed", trainer={"auto_resume": True}, output={"overwrite": False})))

    wf, wr = _weights(full), _weights(resumed)
    assert wf.keys() == wr.keys()
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k
    for split in ("val", "test"):
        for m in ("auroc_macro", "accuracy", "f1_macro"):
            assert resumed.metrics[split][m] == full.metrics[split][m], (split, m)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["val/auroc_macro"] == b["val/auroc_macro"] and a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-6)
    mf, mr = load_bundle(full.bundle_dir).manifest, load_bundle(resumed.bundle_dir).manifest
    assert mf.weights_source == mr.weights_source and mf.thresholds == mr.thresholds


def test_manifest_records_whether_ema_or_raw_weights_were_kept(tmp_path: Path) -> None:
    # decay ~0: the average equals the raw weights, so EMA ties and wins (ties go to EMA)
    r = train(config_from_dict(_raw(tmp_path, "ema", optim={"ema_decay": 1e-6}, trainer={"max_epochs": 1})))
    man = load_bundle(r.bundle_dir).manifest
    ck = torch.load(r.best_checkpoint, map_location="cpu", weights_only=False)
    assert ck["medlens_ema_better"][ck["epoch"]] is True
    assert man.weights_source == "ema"
    w = _weights(r)
    for k, v in ck["medlens_ema_state"].items():
        if v.is_floating_point():
            assert torch.equal(w[k], v), k
    r = train(config_from_dict(_raw(tmp_path, "raw", optim={"ema": False}, trainer={"max_epochs": 1})))
    assert load_bundle(r.bundle_dir).manifest.weights_source == "raw"


@pytest.mark.heavy  # 29 s (a subprocess killed mid-run); exact resume is also proven by the tests above and by auto_resume with workers
def test_sigkilled_run_leaves_a_last_checkpoint_that_loads_and_resumes(tmp_path: Path) -> None:
    raw = _raw(tmp_path, "killed", trainer={"max_epochs": 200, "auto_resume": True}, output={"overwrite": False})
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    ckpt = tmp_path / "runs" / "killed" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from medlens.cli import main; main()", "train", str(cfg_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + 600
        while not ckpt.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 600 s")
            time.sleep(0.2)
        time.sleep(float(np.random.default_rng().uniform(0, 1.5)))  # kill at an arbitrary moment, maybe mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    done = int(state["epoch"])
    assert "state_dict" in state and state["optimizer_states"] and "medlens_history" in state
    assert [h["epoch"] for h in state["medlens_history"]] == list(range(done + 1))

    # auto_resume picks last.ckpt up and finishes the run (two more epochs)
    cfg = config_from_dict(raw, overrides=[f"trainer.max_epochs={done + 3}"])
    result = train(cfg)
    assert [h["epoch"] for h in result.history] == list(range(done + 3))
    assert (result.bundle_dir / "manifest.json").is_file()
    assert result.metrics["test"]["auroc_macro"] is not None
