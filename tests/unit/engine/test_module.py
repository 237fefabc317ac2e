"""Task module: mixup/cutmix targets, parameter groups, schedules, EMA, channels-last."""

from __future__ import annotations

import math

import pytest
import torch

from medlens.engine.module import mix_batch
from medlens.engine.trainer import build_trainer, monitor_for
from tests.unit.engine._tiny import tiny_cfg, tiny_loaders, tiny_module

NAN = float("nan")


def _batch(task: str, n: int = 8, k: int = 3):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 8, 8, generator=g)
    if task == "multilabel":
        t = (torch.rand(n, k, generator=g) > 0.5).float()
        t[0, 1] = NAN
        t[3, :] = NAN
    else:
        t = torch.eye(k)[torch.randint(0, k, (n,), generator=g)]
        t[2] = NAN  # a row with an unknown class
    return images, t, ~torch.isnan(t)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_mixed_targets_stay_in_unit_interval_and_unknown_stays_unknown(task, mixup, cutmix):
    images, targets, mask = _batch(task)
    for s in range(20):
        g = torch.Generator().manual_seed(s)
        x, t, m, lam = mix_batch(images, targets, mask, mixup, cutmix, g)
        assert x.shape == images.shape and 0.0 <= lam <= 1.0
        known = t[m]
        assert ((known >= 0) & (known <= 1)).all()
        assert torch.isnan(t[~m]).all() and not torch.isnan(known).any()
        # an entry unknown in the original batch is never known after mixing
        assert not (m & ~mask).any()
        if task == "multiclass":
            rows = m.all(dim=1)
            assert torch.allclose(t[rows].sum(dim=1), torch.ones(int(rows.sum())))
    # the originally unknown row (multiclass: row 2; multilabel: row 3) is unknown after mixing
    row = 3 if task == "multilabel" else 2
    assert torch.isnan(t[row]).all()


def test_mixup_mixes_pixels_and_targets_with_the_same_weight():
    images = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    targets = torch.tensor([[0.0], [1.0]])
    x, t, _, lam = mix_batch(images, targets, torch.ones(2, 1, dtype=torch.bool), 1.0, 0.0, torch.Generator().manual_seed(3))
    for i in range(2):
        # pixel value == fraction of image 1 in the mix == mixed target
        assert float(x[i].mean()) == pytest.approx(float(t[i, 0]), abs=1e-6)


def test_parameter_groups_backbone_lr_and_no_decay_for_norms(tmp_path):
    cfg = tiny_cfg(tmp_path, optim={"lr": 1e-2, "backbone_lr": 1e-3, "weight_decay": 0.05, "scheduler": "none"})
    module = tiny_module(cfg)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    by_id = {id(p): n for n, p in module.model.named_parameters()}
    for g in opt.param_groups:
        names = [by_id[id(p)] for p in g["params"]]
        is_back = {n.startswith("backbone.") for n in names}
        assert len(is_back) == 1
        assert g["lr"] == (1e-3 if is_back.pop() else 1e-2)
        one_d = {p.ndim <= 1 for p in g["params"]}
        assert len(one_d) == 1
        assert g["weight_decay"] == (0.0 if one_d.pop() else 0.05)
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len(list(module.model.parameters()))


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizer_choice(tmp_path, name, cls):
    module = tiny_module(tiny_cfg(tmp_path, optim={"optimizer": name, "scheduler": "none", "momentum": 0.8}))
    opt = module.configure_optimizers()
    assert type(opt) is cls
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.8


@pytest.mark.parametrize("monitor,mode", [("val/auroc_macro", "max"), ("val/loss", "min")])
def test_plateau_scheduler_follows_the_monitored_metric(tmp_path, monitor, mode):
    cfg = tiny_cfg(tmp_path, optim={"scheduler": "plateau", "plateau_patience": 1, "gamma": 0.5}, trainer={"monitor": monitor})
    from medlens.engine.module import optim_settings
    from medlens.engine.trainer import monitor_for
    from medlens.tasks.classification.losses import create_loss
    from medlens.tasks.classification.module import MODULES
    from tests.unit.engine._tiny import tiny_net

    metric, m = monitor_for(cfg, ("auroc_macro", "max"))
    from medlens.data.labels import LabelSpace

    module = MODULES["binary"](model=tiny_net(), label_space=LabelSpace(("a", "b"), "binary"), loss=create_loss("bce", "binary"),
                         optim=optim_settings(cfg), monitor_metric=metric, monitor_mode=m)
    conf = module.configure_optimizers()
    sched = conf["lr_scheduler"]
    assert sched["monitor"] == monitor and sched["interval"] == "epoch"
    assert sched["scheduler"].mode == mode and sched["scheduler"].factor == 0.5 and sched["scheduler"].patience == 1


def test_plateau_scheduler_reduces_lr_in_a_real_fit(tmp_path):
    # frozen backbone (norm statistics fixed too) and a tiny lr: val/loss cannot improve by 1e-4, so the lr is cut
    cfg = tiny_cfg(tmp_path, optim={"lr": 1e-6, "scheduler": "plateau", "plateau_patience": 0, "gamma": 0.1, "freeze_backbone": True},
                   trainer={"max_epochs": 3, "monitor": "val/loss"})
    from medlens.engine.module import optim_settings
    from medlens.tasks.classification.losses import create_loss
    from medlens.tasks.classification.module import MODULES
    from tests.unit.engine._tiny import tiny_net

    space, train_dl, val_dl = tiny_loaders(48)
    module = MODULES["binary"](model=tiny_net(), label_space=space, loss=create_loss("bce", "binary"), optim=optim_settings(cfg),
                         monitor_metric="loss", monitor_mode="min")
    trainer, _ = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")))
    trainer.fit(module, train_dl, val_dl)
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert max(lrs) == pytest.approx(1e-8)  # no improvement after epochs 1 and 2: cut twice by gamma


def test_multistep_schedule(tmp_path):
    module = tiny_module(tiny_cfg(tmp_path, optim={"scheduler": "multistep", "milestones": [1, 2], "gamma": 0.5}))
    conf = module.configure_optimizers()
    sched = conf["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR) and conf["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(3):
        lrs.append(conf["optimizer"].param_groups[0]["lr"])
        conf["optimizer"].step()
        sched.step()
    assert lrs == pytest.approx([3e-3, 1.5e-3, 0.75e-3])


def test_warmup_cosine_schedule_in_a_real_fit(tmp_path):
    # 96 rows / 16 = 6 steps per epoch, 3 epochs = 18 steps, warmup 1 epoch = 6 steps
    cfg = tiny_cfg(tmp_path, optim={"lr": 1e-2, "warmup_epochs": 1.0, "min_lr": 1e-4}, trainer={"max_epochs": 3})
    space, train_dl, val_dl = tiny_loaders(96)
    module = tiny_module(cfg, space)
    seen: list[float] = []

    class Record(__import__("lightning").Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer, _ = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")), extra_callbacks=[Record()])
    trainer.fit(module, train_dl, val_dl)
    assert len(seen) == 18
    assert seen[:6] == pytest.approx([1e-2 * (i + 1) / 6 for i in range(6)])
    expected_mid = 1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 6 / 12))
    assert seen[12] == pytest.approx(expected_mid)
    assert seen[-1] < seen[6] and seen[-1] >= 1e-4


def test_ema_updates_once_per_optimizer_step_with_accumulation(tmp_path):
    cfg = tiny_cfg(tmp_path, optim={"ema": True, "ema_decay": 0.9, "accumulate_grad_batches": 2}, trainer={"max_epochs": 1})
    space, train_dl, val_dl = tiny_loaders(96)
    module = tiny_module(cfg, space)
    calls = []
    orig = module._update_ema
    module._update_ema = lambda: (calls.append(module.global_step), orig())[-1]
    trainer, _ = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")))
    trainer.fit(module, train_dl, val_dl)
    assert trainer.global_step == 3  # 6 batches, 2 per optimiser step
    assert calls == [1, 2, 3]
    # the averaged weights differ from the raw ones, and carry no gradient
    raw = dict(module.model.named_parameters())
    assert any(not torch.equal(p, raw[n]) for n, p in module.ema_model.named_parameters())
    assert not any(p.requires_grad for p in module.ema_model.parameters())


def test_channels_last_gives_the_same_outputs(tmp_path):
    cfg = tiny_cfg(tmp_path, trainer={"channels_last": True})
    module = tiny_module(cfg)
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    space, _, val_dl = tiny_loaders(32)
    batch = next(iter(val_dl))
    ref = module.model(batch.images.clone())
    batch = module.on_after_batch_transfer(batch, 0)
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(module.model(batch.images), ref, atol=1e-5)
