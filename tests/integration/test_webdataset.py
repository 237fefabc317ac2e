"""``data.kind: webdataset`` end to end on real PneumoniaMNIST images in tar shards: training through the CLI from
local shards and from a local HTTP server, and a run stopped mid-epoch (as by Ctrl-C/SIGTERM) that resumes to the
very weights of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medlens.config import config_from_dict
from medlens.engine.signals import TrainingInterrupted
from medlens.training import train
from tests._crash import StopAt
from tests._shards import http_server, write_shards

pytestmark = pytest.mark.slow


@pytest.fixture
def shards(pneumonia_npz: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    write_shards(pneumonia_npz, folder, "train", 48, 16, text=True)  # 3 shards of 16
    write_shards(pneumonia_npz, folder, "val", 16, 16)
    write_shards(pneumonia_npz, folder, "test", 16, 16)
    return folder


def _raw(base: str, out: Path, name: str, **data) -> dict:
    return {
        "seed": 5,
        "data": {"kind": "webdataset", "urls": {"train": f"{base}/train-{{000..002}}.tar", "val": f"{base}/val-000.tar",
                                                "test": f"{base}/test-000.tar"},
                 "label_names": ["normal", "pneumonia"], "image_size": 28, "channels": 1, "batch_size": 8, "num_workers": 2,
                 "shuffle_buffer": 12, "augment": "light", **data},
        "model": {"backbone": "resnet10t"},
        "trainer": {"max_epochs": 1, "progress_bar": False, "channels_last": False},
        "ood": {"method": "none"},
        "output": {"dir": str(out), "name": name, "overwrite": True},
    }


def _cli_train(raw: dict, path: Path) -> dict:
    from typer.testing import CliRunner

    from medlens.cli import app

    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["train", str(path)])
    assert r.exit_code == 0, r.output
    run = Path(raw["output"]["dir"]) / raw["output"]["name"]
    return json.loads((run / "bundle" / "manifest.json").read_text())


def test_train_from_local_shards_through_the_cli(shards: Path, tmp_path: Path) -> None:
    # a pattern relative to the YAML file, as users write it
    raw = _raw("shards", tmp_path / "runs", "local", text_column="report")
    man = _cli_train(raw, tmp_path / "local.yaml")
    summary = man["extra"]["data_summary"]
    assert summary["splits"] == {"train": 48, "val": 16, "test": 16} and summary["split_method"] == "predefined"
    assert summary["text_column"] == "report" and summary["rows_with_text"] == 48
    assert man["label_names"] == ["normal", "pneumonia"] and len(man["history"]) == 1
    assert man["history"][0]["step"] == 6  # 3 shards over 2 workers: 32 + 16 rows in batches of 8
    assert "test" in man["metrics"] and 0.0 <= man["metrics"]["test"]["auroc_macro"] <= 1.0
    assert man["config"]["data"]["urls"]["train"] == str(shards / "train-{000..002}.tar")  # made absolute
    # evaluate re-reads the test shard from the bundle's config and scores its members read at random
    from typer.testing import CliRunner

    from medlens.cli import app

    bundle = tmp_path / "runs" / "local" / "bundle"
    r = CliRunner().invoke(app, ["evaluate", str(bundle), "--json", "--no-record"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["auroc_macro"] == pytest.approx(man["metrics"]["test"]["auroc_macro"])


def test_train_from_a_local_http_server(shards: Path, tmp_path: Path) -> None:
    with http_server(shards) as base:
        man = _cli_train(_raw(base, tmp_path / "runs", "http"), tmp_path / "http.yaml")
    assert man["extra"]["data_summary"]["splits"] == {"train": 48, "val": 16, "test": 16}
    assert man["history"][0]["step"] == 6 and "test" in man["metrics"]


@pytest.mark.heavy  # 23 s; tests/unit/data/test_stream.py proves the resumed loader continues exactly (rows and pixels)
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(shards: Path, tmp_path: Path) -> None:
    def cfg(name: str, **trainer):
        raw = _raw(str(shards), tmp_path / "runs", name)
        raw["trainer"].update(max_epochs=2, **trainer)
        raw["optim"] = {"lr": 3e-3, "warmup_epochs": 0.5, "mixup_alpha": 0.4, "mix_prob": 0.5}
        raw["model"]["drop_rate"] = 0.2  # dropout and mixup draw from the random state the checkpoint carries
        return config_from_dict(raw)

    full = train(cfg("full"))
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg("resumed"), callbacks=[StopAt(epoch=1, batch=2)])  # 3 of epoch 2's 6 batches trained
    ck = torch.load(stop.value.checkpoint, map_location="cpu", weights_only=True)
    (state,) = ck["medlens_loader_state"]  # the stream's place in the epoch
    assert state["epoch"] == 1 and state["batches"] == 3
    resumed = train(cfg("resumed", auto_resume=True))
    wf, wr = load_file(str(full.bundle_dir / "model.safetensors")), load_file(str(resumed.bundle_dir / "model.safetensors"))
    assert wf.keys() == wr.keys()
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history] == [6, 12]
    assert resumed.metrics["test"]["auroc_macro"] == full.metrics["test"]["auroc_macro"]
