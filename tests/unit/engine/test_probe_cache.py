"""trainer.channels_last: auto is measured once per machine, network, input size and precision, then remembered in
$MEDLENS_CACHE_DIR/probe.json: a second run applies the remembered layout without timing a step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import medlens.engine.module as module_mod
from medlens.engine.trainer import build_trainer, memory_format_key, monitor_for, probe_cache_path

from ._tiny import tiny_cfg, tiny_loaders, tiny_module


def _fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cost: dict[bool, float], n: int = 48):
    """One epoch with channels_last: auto; returns (module, how many times the layouts were timed)."""
    calls = []
    real = module_mod.measure_memory_formats

    def counted(step, steps=3, timer=None, margin=module_mod.CHANNELS_LAST_MARGIN):
        calls.append(1)
        clock = {"now": 0.0}

        def timed(cl):
            step(cl)
            clock["now"] += cost[cl]

        return real(timed, steps, lambda: clock["now"], margin)

    monkeypatch.setattr(module_mod, "measure_memory_formats", counted)
    cfg = tiny_cfg(tmp_path, trainer={"max_epochs": 1, "channels_last": "auto"})
    space, train_dl, val_dl = tiny_loaders(n)
    torch.manual_seed(0)
    module = tiny_module(cfg, space)
    tr, _ = build_trainer(cfg, tmp_path, monitor_for(cfg, ("auroc_macro", "max")))
    tr.fit(module, train_dl, val_dl)
    return module, len(calls)


def test_the_second_run_reuses_the_choice_without_probing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    path = probe_cache_path()
    assert "medlens-cache" in str(path)  # the test's own cache (tests/conftest.py), not ~/.cache
    assert not path.exists()
    first, probes = _fit(tmp_path / "a", monkeypatch, {False: 2.0, True: 1.0})
    assert probes == 1 and first.channels_last is True and first.memory_format_probe["how"].startswith("probe")
    saved = json.loads(path.read_text())
    (rec,) = saved.values()
    assert rec["channels_last"] is True and rec["input"] == [16, 1, 16, 16] and rec["precision"] == "32-true"
    assert rec["machine"] and rec["network"].startswith("ImageClassifier")
    # the same machine, network, input and precision: applied from the file, no step timed (a probe would now
    # pick contiguous: the costs are reversed)
    with caplog.at_level(logging.INFO, logger="medlens.train"):
        second, probes = _fit(tmp_path / "b", monkeypatch, {False: 1.0, True: 2.0})
    assert probes == 0
    assert second.channels_last is True and second.memory_format_probe["how"].startswith("cached")
    assert "as measured on" in caplog.text and str(path) in caplog.text
    conv = next(m for m in second.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # the remembered layout is applied
    ck = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["medlens_memory_format"]["channels_last"] is True  # recorded in the run as a measured choice


def test_another_input_size_or_precision_is_measured_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, probes = _fit(tmp_path / "a", monkeypatch, {False: 2.0, True: 1.0})
    assert probes == 1
    _, probes = _fit(tmp_path / "b", monkeypatch, {False: 2.0, True: 1.0}, n=80)  # same batch: still a hit
    assert probes == 0
    m = tiny_module(tiny_cfg(tmp_path))
    x = torch.zeros(16, 1, 16, 16)
    k32, kbf, k24 = (memory_format_key(m, x, None, "32-true"), memory_format_key(m, x, None, "bf16-mixed"),
                     memory_format_key(m, torch.zeros(16, 1, 24, 24), None, "32-true"))
    assert len({json.dumps(k, sort_keys=True) for k in (k32, kbf, k24)}) == 3


def test_an_unreadable_cache_file_means_a_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = probe_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    module, probes = _fit(tmp_path, monkeypatch, {False: 1.0, True: 2.0})
    assert probes == 1 and module.channels_last is False
    assert len(json.loads(path.read_text())) == 1  # rewritten whole
