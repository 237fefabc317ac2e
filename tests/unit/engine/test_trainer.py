"""Trainer factory: precision, gradient clipping and accumulation, monitor, checkpoints."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

import medlens.engine.trainer as trainer_mod
from medlens.engine.trainer import build_trainer, monitor_for, precision_arg
from medlens.tasks import get_task
from tests.unit.engine._tiny import tiny_cfg, tiny_loaders, tiny_module


class _GradNorms(L.Callback):
    """Total gradient norm seen by each optimiser step (after Lightning's clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.steps = 0

    def on_train_start(self, trainer, pl_module):
        def hook(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        trainer.optimizers[0].register_step_post_hook(hook)  # Lightning runs forward/backward/clip inside step()


def _fit(tmp_path, optim=None, trainer=None, n=64, small_input=False):
    cfg = tiny_cfg(tmp_path, optim={"lr": 1e-2, **(optim or {})}, trainer={"max_epochs": 1, **(trainer or {})})
    space, train_dl, val_dl = tiny_loaders(n)
    torch.manual_seed(0)  # the network's initial weights do not depend on which tests ran before
    module = tiny_module(cfg, space, small_input)
    rec = _GradNorms()
    tr, ckpt = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")), extra_callbacks=[rec])
    tr.fit(module, train_dl, val_dl)
    return tr, module, rec


def test_precision_mapping(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trainer_mod, "cpu_bf16_support", lambda: "none")
    assert precision_arg("32", "cpu") == "32-true"
    assert precision_arg("auto", "cpu") == "32-true"
    with pytest.raises(ValueError, match="precision: 16 .* needs a CUDA GPU; use precision: bf16 on CPU"):
        precision_arg("16", "cpu")


@pytest.mark.parametrize(("support", "warning"), [
    ("none", "trainer.precision: bf16 on a CPU without bf16 units (no avx512_bf16/amx_bf16) runs several times slower than 32"),
    ("vector", "trainer.precision: bf16 on a CPU with avx512_bf16 but no AMX bf16 units measured about 0.8x the speed of 32"),
])
def test_auto_picks_bf16_only_on_a_cpu_with_bf16_matrix_units(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, support, warning):
    monkeypatch.setattr(trainer_mod, "cpu_bf16_support", lambda: "matrix")
    with caplog.at_level(logging.WARNING, logger="medlens"):
        assert precision_arg("auto", "cpu") == "bf16-mixed"
        assert precision_arg("bf16", "cpu") == "bf16-mixed"
    assert caplog.records == []  # bf16 on a CPU that has the units: no warning
    monkeypatch.setattr(trainer_mod, "cpu_bf16_support", lambda: support)
    with caplog.at_level(logging.WARNING, logger="medlens"):
        assert precision_arg("auto", "cpu") == "32-true"  # never bf16 where it is emulated or measured slower
        assert caplog.records == []
        assert precision_arg("bf16", "cpu") == "bf16-mixed"  # forced: honoured, with one warning line
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert msgs[0].startswith(warning)


def test_cpu_bf16_support_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu sse avx2 avx512f", "none"), ("fpu avx512f avx512_bf16", "vector"),
                            ("fpu avx512_bf16 amx_tile amx_bf16", "matrix")):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda f, *a, _i=info, **k: real_open(_i if f == "/proc/cpuinfo" else f, *a, **k))
        trainer_mod.cpu_bf16_support.cache_clear()
        assert trainer_mod.cpu_bf16_support() == expected
        assert trainer_mod.cpu_has_bf16() is (expected == "matrix")

    def no_proc(f, *a, **k):
        if f == "/proc/cpuinfo":
            raise FileNotFoundError(f)
        return real_open(f, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    trainer_mod.cpu_bf16_support.cache_clear()
    assert trainer_mod.cpu_bf16_support() == "none"  # unknown CPU: treated as without bf16 units
    monkeypatch.undo()
    trainer_mod.cpu_bf16_support.cache_clear()


@pytest.mark.slow
def test_gradient_clipping_and_accumulation(tmp_path):
    tr, _, free = _fit(tmp_path / "a")
    assert tr.global_step == 4 and len(free.norms) == 4  # 64 rows, batch 16
    assert max(free.norms) > 0.01  # the clip below is active
    tr, _, clipped = _fit(tmp_path / "b", optim={"grad_clip": 0.01, "accumulate_grad_batches": 2})
    assert tr.gradient_clip_val == 0.01 and tr.accumulate_grad_batches == 2
    assert tr.global_step == 2 and len(clipped.norms) == 2  # one optimiser step per 2 batches
    assert max(clipped.norms) <= 0.01 * (1 + 1e-4)


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(tmp_path):
    # 2x2 feature maps (the small-input stem): 1x1 maps make batch norm overflow in bf16 on some initialisations
    tr, module, rec = _fit(tmp_path, trainer={"precision": "bf16", "channels_last": True}, small_input=4)
    assert tr.precision == "bf16-mixed"
    assert all(torch.isfinite(torch.tensor(rec.norms)))
    assert module.history and module.history[-1]["val/loss"] == module.history[-1]["val/loss"]  # finite, not NaN
    assert all(p.dtype == torch.float32 for p in module.model.parameters())  # master weights stay float32


def test_monitor_defaults_and_overrides(tmp_path):
    assert monitor_for(tiny_cfg(tmp_path), get_task("binary").default_monitor()) == ("auroc_macro", "max")
    assert monitor_for(tiny_cfg(tmp_path, trainer={"monitor": "val/loss"}), get_task("binary").default_monitor()) == ("loss", "min")
    assert monitor_for(tiny_cfg(tmp_path, trainer={"monitor": "val/f1_macro"}), get_task("multilabel").default_monitor()) == ("f1_macro", "max")


def test_early_stopping_and_checkpoints_follow_the_monitor(tmp_path):
    cfg = tiny_cfg(tmp_path, trainer={"early_stopping_patience": 2, "monitor": "val/loss", "max_time_s": 60})
    tr, ckpt = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")))
    from lightning.pytorch.callbacks import EarlyStopping, Timer

    es = next(c for c in tr.callbacks if isinstance(c, EarlyStopping))
    assert es.monitor == "val/loss" and es.mode == "min" and es.patience == 2
    assert ckpt.monitor == "val/loss" and ckpt.mode == "min" and ckpt.save_last
    assert any(isinstance(c, Timer) for c in tr.callbacks)


def test_early_stopping_min_delta_stops_when_moves_are_smaller(tmp_path):
    # this tiny run's val/loss rises every epoch (by 0.3-0.7), so followed upwards (mode max) each epoch "improves":
    # without min_delta patience 1 never runs out; with min_delta 5 no move is large enough and epoch 2 stops the run
    trainer = {"max_epochs": 4, "monitor": "val/loss", "monitor_mode": "max", "early_stopping_patience": 1}
    free, m, _ = _fit(tmp_path / "a", optim={"lr": 1e-3}, trainer=trainer)
    strict, _, _ = _fit(tmp_path / "b", optim={"lr": 1e-3}, trainer={**trainer, "early_stopping_min_delta": 5.0})
    from lightning.pytorch.callbacks import EarlyStopping

    losses = [h["val/loss"] for h in m.history]
    assert all(0 < b - a < 5 for a, b in zip(losses, losses[1:], strict=False)), losses  # the premise above
    es = next(c for c in strict.callbacks if isinstance(c, EarlyStopping))
    assert es.min_delta == 5.0 and es.mode == "max"
    assert free.current_epoch == 4 and not free.should_stop
    assert strict.current_epoch == 2 and strict.should_stop  # epoch 1 set the best, epoch 2 did not beat it by 5


def test_min_delta_without_patience_and_save_top_k_zero_are_refused(tmp_path):
    from medlens.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.early_stopping_min_delta acts only with trainer.early_stopping_patience"):
        tiny_cfg(tmp_path, trainer={"early_stopping_min_delta": 0.01})
    with pytest.raises(ConfigError, match="trainer.save_top_k: 0"):
        tiny_cfg(tmp_path, trainer={"save_top_k": 0})


def test_top_k_and_every_n_epoch_checkpoints_are_written(tmp_path):
    from medlens.engine.checkpoint import load_checkpoint

    _fit(tmp_path / "a", trainer={"max_epochs": 3, "save_top_k": 2, "checkpoint_every_n_epochs": 2})
    ck = tmp_path / "a" / "checkpoints"
    assert (ck / "best.ckpt").is_file() and (ck / "last.ckpt").is_file()
    top = sorted(p.name for p in (ck / "top").glob("*.ckpt"))
    assert len(top) == 2 and set(top) <= {"epoch000.ckpt", "epoch001.ckpt", "epoch002.ckpt"}
    assert sorted(p.name for p in (ck / "every").glob("*.ckpt")) == ["epoch001.ckpt"]  # the 2nd epoch (0-based 1)
    assert load_checkpoint(ck / "every" / "epoch001.ckpt")["epoch"] == 1
    _fit(tmp_path / "b", trainer={"max_epochs": 3, "save_top_k": -1})
    assert len(list((tmp_path / "b" / "checkpoints" / "top").glob("*.ckpt"))) == 3
    assert not (tmp_path / "b" / "checkpoints" / "every").exists()
