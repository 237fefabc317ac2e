"""trainer.channels_last: auto measures both layouts on the first batch and keeps the faster; true/false force."""

from __future__ import annotations

import logging

import pytest
import torch

import medlens.engine.module as module_mod
from medlens.engine.module import measure_memory_formats
from medlens.engine.trainer import build_trainer, monitor_for

from ._tiny import tiny_cfg, tiny_loaders, tiny_module


class FakeClock:
    """A timer that advances only when the probed step runs: ``cost[channels_last]`` seconds a step."""

    def __init__(self, cost: dict[bool, float]) -> None:
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def step(self, cl: bool) -> None:
        self.calls.append(cl)
        self.now += self.cost[cl]


@pytest.mark.parametrize(("cost", "expected"), [({False: 2.0, True: 1.0}, True), ({False: 1.0, True: 2.0}, False),
                                                ({False: 1.0, True: 0.97}, False)])  # 3 % faster: within the margin
def test_the_faster_layout_is_chosen(cost, expected):
    clock = FakeClock(cost)
    use, t_contig, t_cl = measure_memory_formats(clock.step, steps=3, timer=clock)
    assert use is expected and (t_contig, t_cl) == pytest.approx((cost[False], cost[True]))
    assert clock.calls == [False, True] * 4  # one warm-up each, then alternated


def _fit(tmp_path, channels_last, cost=None, monkeypatch=None):
    if cost is not None:
        clock = FakeClock(cost)
        real = module_mod.measure_memory_formats

        def fake(step, steps=3, timer=None, margin=module_mod.CHANNELS_LAST_MARGIN):
            def timed(cl):
                step(cl)  # the real forward+backward on the real batch
                clock.step(cl)
            return real(timed, steps, clock, margin)

        monkeypatch.setattr(module_mod, "measure_memory_formats", fake)
    elif monkeypatch is not None:
        monkeypatch.setattr(module_mod, "measure_memory_formats", lambda *a, **k: pytest.fail("forced layouts are not probed"))
    cfg = tiny_cfg(tmp_path, trainer={"max_epochs": 1, "channels_last": channels_last})
    space, train_dl, val_dl = tiny_loaders(48)
    torch.manual_seed(0)
    module = tiny_module(cfg, space)
    seen = []
    orig = module.training_step

    def record(batch, batch_idx):
        seen.append(module.channels_last)  # (grey images: C=1 strides are the same in both layouts)
        return orig(batch, batch_idx)

    module.training_step = record
    tr, _ = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")))
    tr.fit(module, train_dl, val_dl)
    return module, seen


def _conv_is_channels_last(module) -> bool:
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1))
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


@pytest.mark.parametrize(("cost", "expected"), [({False: 2.0, True: 1.0}, True), ({False: 1.0, True: 2.0}, False)])
def test_auto_applies_the_measured_choice_and_logs_both_timings(tmp_path, monkeypatch, caplog, cost, expected):
    with caplog.at_level(logging.INFO, logger="medlens.train"):
        module, seen = _fit(tmp_path, "auto", cost, monkeypatch)
    assert module.channels_last is expected
    assert _conv_is_channels_last(module) is expected
    assert seen and all(s is expected for s in seen)  # every training batch, the first one included
    assert module.memory_format_probe == {"channels_last": expected, "ms_contiguous": pytest.approx(1000 * cost[False]),
                                          "ms_channels_last": pytest.approx(1000 * cost[True]), "how": module.memory_format_probe["how"]}
    assert f"contiguous {1000 * cost[False]:.1f} ms, channels-last {1000 * cost[True]:.1f} ms" in caplog.text
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["medlens_memory_format"]["channels_last"] is expected  # recorded in the run; a resume reuses it


def test_the_probe_leaves_training_untouched(tmp_path, monkeypatch):
    # same weights after one epoch whether or not the probe ran first (both choosing contiguous)
    a, _ = _fit(tmp_path / "a", "auto", {False: 1.0, True: 2.0}, monkeypatch)
    b, _ = _fit(tmp_path / "b", False, None, monkeypatch)
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("flag", [True, False])
def test_true_and_false_force_the_layout_without_a_probe(tmp_path, monkeypatch, flag):
    module, seen = _fit(tmp_path, flag, None, monkeypatch)
    assert module.channels_last is flag and _conv_is_channels_last(module) is flag
    assert all(s is flag for s in seen) and module.memory_format_probe is None


def test_an_invalid_value_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(ValueError, match="trainer.channels_last: 'sometimes'; valid: true, false, auto"):
        tiny_module(cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"channels_last": "sometimes"})}))
