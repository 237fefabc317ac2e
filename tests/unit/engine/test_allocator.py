"""trainer.tune_allocator keeps freed training buffers in the process; the optimiser uses torch's fused kernel.

Both are speed defaults (benchmarks/throughput.py): the tests check what each changes, not how fast it is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import medlens.engine.allocator as allocator
from medlens.engine.fit import fit
from medlens.engine.trainer import monitor_for

from ._tiny import tiny_cfg, tiny_loaders, tiny_module

# allocate 64 MiB, write every page, free it: how much of it stays resident (MiB) once freed
CHURN = textwrap.dedent("""
    import os, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from medlens.engine.allocator import tune_allocator
        assert tune_allocator()
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    before = rss()
    for _ in range(3):
        a = np.empty(64 << 20, np.uint8)
        a.fill(1)
        del a
    print(rss() - before)
""")


def _kept_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="the allocator tuning acts on glibc only")
def test_tuned_allocator_keeps_freed_buffers_for_reuse():
    # untuned: a 64 MiB block is its own mmap, unmapped on free (and faulted in afresh next step);
    # tuned: it comes from the heap and stays mapped for the next allocation, once (not three times)
    assert _kept_mib("plain") < 16
    assert 56 < _kept_mib("tuned") < 2 * 64


def test_tune_allocator_is_idempotent_and_reports_whether_it_acted(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {})
    first = allocator.tune_allocator()
    assert allocator.tune_allocator() is first
    assert first is (allocator._glibc() is not None)


@pytest.mark.parametrize("tune", [True, False])
def test_fit_tunes_the_allocator_only_when_the_key_is_on(tmp_path, monkeypatch, tune):
    calls = []
    monkeypatch.setattr(allocator, "tune_allocator", lambda: calls.append(1) or True)
    cfg = tiny_cfg(tmp_path, trainer={"max_epochs": 1, "tune_allocator": tune})
    space, tl, vl = tiny_loaders()
    fit(cfg, tiny_module(cfg, space), tl, vl, tmp_path / "run", monitor_for(cfg, ("auroc_macro", "max")))
    assert calls == ([1] if tune else [])


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimiser_is_fused_on_cpu(tmp_path, name):
    cfg = tiny_cfg(tmp_path, optim={"optimizer": name, "scheduler": "none"})
    m = tiny_module(cfg)
    opt = m.configure_optimizers()
    assert opt.defaults.get("fused") is True and m.fused_optimizer is True


def test_fused_step_is_the_same_update_as_the_default(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path, optim={"scheduler": "none", "weight_decay": 0.05})
    a, b = tiny_module(cfg), tiny_module(cfg)
    b.model.load_state_dict(a.model.state_dict())
    fused = a.configure_optimizers()
    plain = torch.optim.AdamW([dict(g, params=[dict(b.model.named_parameters())[n] for n in names])
                               for g, names in zip(fused.param_groups, _group_names(a), strict=True)],
                              lr=fused.defaults["lr"], foreach=False)
    x = torch.randn(8, 1, 16, 16)
    for _ in range(3):
        for m, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            m.model(x).sum().backward()
            opt.step()
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def _group_names(module) -> list[list[str]]:
    by_id = {id(p): n for n, p in module.model.named_parameters()}
    return [[by_id[id(p)] for p in g["params"]] for g in module.configure_optimizers().param_groups]


def test_no_fused_kernel_falls_back_to_the_default(tmp_path, monkeypatch):
    real = torch.optim.AdamW

    class NoFused(real):
        def __init__(self, params, **kw):
            if kw.get("fused"):
                raise RuntimeError("fused not supported here")
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", NoFused)
    cfg = tiny_cfg(tmp_path, optim={"scheduler": "none"})
    m = tiny_module(cfg)
    opt = m.configure_optimizers()
    assert not opt.defaults.get("fused") and m.fused_optimizer is False
    assert all(not g.get("fused") for g in opt.param_groups)
