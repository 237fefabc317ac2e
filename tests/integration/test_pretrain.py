"""``medlens pretrain``: SimCLR through the one engine -- resume, the weights file fine-tuning loads, the rows it
reads (never test), a real-data run, and an objective that learns. Tiny CPU runs (16-28 px, resnet10t)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from medlens.config import config_from_dict
from medlens.models import create_model
from medlens.models.pretrained import PretrainedWeightsError
from medlens.pretrain import SimCLRNet, ViewAugment, nt_xent, pretrain, pretrain_rows
from medlens.training import prepare_data


def _raw(tmp_path: Path, name: str = "p", **sections) -> dict:
    raw = {
        "seed": 5,
        "data": {"kind": "synthetic", "num_samples": 64, "image_size": 16, "channels": 1, "batch_size": 16, "augment": "none"},
        "model": {"backbone": "resnet10t", "small_input": False},
        "trainer": {"progress_bar": False},
        "pretrain": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "name": name},
        "output": {"dir": str(tmp_path / "runs"), "name": "t", "overwrite": True},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return raw


class _Crash(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash at epoch 1")


def test_resumed_pretraining_equals_uninterrupted(tmp_path):
    full = pretrain(config_from_dict(_raw(tmp_path, "full")))
    cfg = config_from_dict(_raw(tmp_path, "resumed"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(cfg, callbacks=[_Crash()])
    ckpt = tmp_path / "runs" / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 0
    assert not (tmp_path / "runs" / "resumed" / "backbone.safetensors").exists()  # nothing half-done under the final name
    resumed = pretrain(config_from_dict(_raw(tmp_path, "resumed", trainer={"auto_resume": True}, output={"overwrite": False})))
    assert [h["epoch"] for h in resumed.history] == [0, 1]  # pretrain.epochs: 2
    n = resumed.info["n_images"]
    assert resumed.history[-1]["step"] == 2 * (n // 16) and resumed.info["batch_size"] == 16  # pretrain.batch_size: 16, last partial batch dropped
    a, b = load_file(str(full.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history[-1]["val/loss"] == pytest.approx(full.history[-1]["val/loss"], rel=1e-6)


def test_finetune_loads_every_backbone_tensor_and_refuses_another_network(tmp_path):
    res = pretrain(config_from_dict(_raw(tmp_path, pretrain={"epochs": 1}, data={"image_size": 28}, model={"small_input": "auto"})))
    info = json.loads((res.run_dir / "backbone.json").read_text())
    assert info["backbone"] == "resnet10t" and info["in_chans"] == 1 and info["stem_reduction"] == 4 and info["epochs"] == 1
    assert len(info["sha256"]) == 64
    sd = load_file(str(res.weights))
    assert tuple(sd["conv1.0.weight"].shape)[1:] == (1, 3, 3)  # the small-input stem, which timm's own loader cannot read
    # fine-tuning through the pipeline: model.pretrained is the file
    arch = {"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 28}
    model = create_model({**arch, "pretrained": str(res.weights)})
    mine = model.backbone.state_dict()
    assert sd.keys() == mine.keys()
    for k, v in sd.items():
        assert torch.equal(v, mine[k]), k
    assert model.pretrained_info["sha256"] == info["sha256"]
    with pytest.raises(PretrainedWeightsError, match="stem_reduction"):  # another stem: refused, not half-loaded
        create_model({**arch, "image_size": 64, "pretrained": str(res.weights)})
    with pytest.raises(PretrainedWeightsError, match="backbone 'resnet10t'"):
        create_model({**arch, "backbone": "resnet18", "pretrained": str(res.weights)})


def test_pretraining_rows_never_include_test(tmp_path):
    cfg = config_from_dict(_raw(tmp_path))
    table, splits = prepare_data(cfg)
    rows = pretrain_rows(cfg, table, splits)
    assert set(rows) == set(splits.train) | set(splits.val) and not set(rows) & set(splits.test)
    train_only = pretrain_rows(config_from_dict(_raw(tmp_path, pretrain={"rows": "train"})), table, splits)
    assert set(train_only) == set(splits.train)
    anomaly = config_from_dict(_raw(tmp_path, data={"task": "anomaly", "normal_label": "negative"}, pretrain={"rows": "task_training"}))
    t2, s2 = prepare_data(anomaly)
    normals = pretrain_rows(anomaly, t2, s2)
    assert len(normals) < len(s2.train) and np.all(t2.targets[normals, 0] == 1)  # the anomaly task's own rows: normals


def test_pretrain_options_act(tmp_path):
    from medlens.pretrain import pretrain_run_dir, simclr_module

    base = config_from_dict(_raw(tmp_path))
    cfg = config_from_dict(_raw(tmp_path, "mine", pretrain={"proj_dim": 8, "temperature": 0.5, "strength": 0.5, "flip": True, "lr": 0.01}))
    space = prepare_data(base)[0].label_space
    m0, _ = simclr_module(base, space)
    m, red = simclr_module(cfg, space)
    assert m.model.head[-1].out_features == 8 != m0.model.head[-1].out_features  # proj_dim
    assert m.temperature == 0.5 and m.optim.lr == 0.01 != m0.optim.lr  # temperature, lr
    assert m.augment.strength == 0.5 and m.augment.flip and not m0.augment.flip  # strength, flip
    x = torch.randn(8, 1, 16, 16)
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    assert float(nt_xent(z, z, 0.5)) != float(nt_xent(z, z, 0.2))
    flipped = ViewAugment(0.01, flip=True)(x, torch.Generator().manual_seed(0))
    plain = ViewAugment(0.01, flip=False)(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(flipped, plain, atol=1e-2)
    assert pretrain_run_dir(cfg).name == "mine" and pretrain_run_dir(config_from_dict(_raw(tmp_path, None))).name == "t-pretrain"  # name


def test_pretraining_for_an_image_norm_detector_sees_standardised_views(tmp_path):
    from medlens.pretrain import simclr_module

    raw = _raw(tmp_path, "pc", data={"task": "anomaly", "normal_label": "negative"},
               model={"detector": "patchcore", "input_norm": "image"}, trainer={"max_epochs": 1}, pretrain={"epochs": 1, "rows": "task_training"})
    cfg = config_from_dict(raw)
    m, _ = simclr_module(cfg, prepare_data(cfg)[0].label_space)
    plain, _ = simclr_module(config_from_dict(_raw(tmp_path)), prepare_data(cfg)[0].label_space)
    m.eval()
    plain.eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        def change(net):  # how far a dimmer, lower-contrast copy moves the embedding, relative to its size
            return float((net(0.5 * x + 0.2) - net(x)).norm() / net(x).norm())

        assert change(m.model) < 1e-3  # the views are standardised, as the detector will see them
        assert change(plain.model) > 100 * change(m.model)
    res = pretrain(cfg)
    assert res.info["input_norm"] == "image"


def test_objective_learns_on_tiny_data():
    torch.manual_seed(0)
    from medlens.models.classifier import build_backbone

    net = SimCLRNet(build_backbone("resnet10t", 1, 16, False)[0], proj_dim=16)
    x = torch.randn(16, 1, 16, 16)
    aug = ViewAugment(1.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        g = torch.Generator().manual_seed(0)  # the same two views every step: the loss must go down
        loss = nt_xent(net(aug(x, g)), net(aug(x, g)), 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1, losses


def test_augment_strength_acts_and_keeps_grey_images_grey():
    x = torch.randn(4, 3, 16, 16).expand(4, 3, 16, 16).clone()
    x[:, 1:] = x[:, :1]  # a grey image stored in 3 channels
    assert torch.equal(ViewAugment(0.0)(x), x)
    y = ViewAugment(1.0)(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(y, x)
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 0], y[:, 2])  # no hue or colour shift


def test_cli_pretrain_writes_the_weights(tmp_path):
    import yaml

    from medlens.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, pretrain={"epochs": 1})))
    r = CliRunner().invoke(app, ["pretrain", str(path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "p" / "backbone.safetensors").is_file() and "backbone.safetensors" in r.output
    bad = CliRunner().invoke(app, ["pretrain", str(path), "--set", "pretrain.temperature=-1"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.heavy  # 12 s; pretraining on real images also runs in the resumed-pretraining test
def test_pretrain_on_real_pneumoniamnist_images(tmp_path, pneumonia_npz):
    raw = _raw(tmp_path, data={"kind": "medmnist", "path": str(pneumonia_npz), "max_samples": 200, "download": False, "image_size": 28},
               pretrain={"epochs": 1, "batch_size": 32}, model={"small_input": "auto"})
    raw["data"].pop("num_samples")
    res = pretrain(config_from_dict(raw))
    assert res.weights.is_file() and res.info["n_images"] > 100 and np.isfinite(res.history[-1]["val/loss"])
