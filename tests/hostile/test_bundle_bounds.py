"""Hostile bundles: bounded before any allocation, never a reach for the hub, NaN is an error, publishing is atomic.

* a manifest is checked against bounds (types, keys, sizes, members, parameter count, weights-file size, finite
  preprocessing) before any network is built or weight read;
* ``architecture.pretrained: true`` in a manifest never makes loading download anything;
* a network that outputs NaN is an error naming the bundle, not a "negative";
* replacing a bundle leaves a complete one at its path at every instant, a kill at any step included.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import medlens
from tests.hostile._helpers import assert_one_line, cli, edit_manifest, good_png

SRC = str(Path(medlens.__file__).resolve().parents[1])
VIT_HUGE = {"type": "classifier", "backbone": "vit_huge_patch14_224", "num_outputs": 1, "in_chans": 1, "image_size": 224}


def _arch(bundle: Path, **fields) -> None:
    d = json.loads((bundle / "manifest.json").read_text())
    d["architecture"].update(fields)
    (bundle / "manifest.json").write_text(json.dumps(d))


def _pre(bundle: Path, **fields) -> None:
    d = json.loads((bundle / "manifest.json").read_text())
    d["preprocessing"].update(fields)
    (bundle / "manifest.json").write_text(json.dumps(d))


# ------------------------------------------------------------------------------------------ bounds
MANIFEST_CASES = {
    "in_chans_1e7": (lambda b: _arch(b, in_chans=1e7), "architecture.in_chans"),
    "in_chans_huge_int": (lambda b: _arch(b, in_chans=10_000_000), "architecture.in_chans"),
    "in_chans_5": (lambda b: _arch(b, in_chans=5), "architecture.in_chans"),
    "image_size_huge": (lambda b: _arch(b, image_size=1_000_000), "architecture.image_size"),
    "num_outputs_huge": (lambda b: _arch(b, num_outputs=10**9), "architecture.num_outputs"),
    "num_outputs_string": (lambda b: _arch(b, num_outputs="many"), "architecture.num_outputs"),
    "unknown_key": (lambda b: _arch(b, hidden_layers=[4096] * 100), "unknown key 'hidden_layers'"),
    "unknown_type": (lambda b: _arch(b, type="mystery"), "architecture.type"),
    "unknown_backbone": (lambda b: _arch(b, backbone="resnet9000"), "architecture.backbone"),
    "drop_rate_nan": (lambda b: _arch(b, drop_rate=math.nan), "architecture.drop_rate"),
    "vit_huge_ensemble": (lambda b: edit_manifest(b, architecture={"type": "ensemble", "activation": "sigmoid", "num_outputs": 1,
                                                                   "members": [VIT_HUGE] * 64}), "parameters"),
    "too_many_members": (lambda b: edit_manifest(b, architecture={"type": "ensemble", "activation": "sigmoid", "num_outputs": 1,
                                                                  "members": [{"type": "classifier", "backbone": "resnet10t"}] * 65}),
                         "architecture.members"),
    "nested_ensemble": (lambda b: edit_manifest(b, architecture={"type": "ensemble", "activation": "sigmoid", "num_outputs": 1,
                                                                 "members": [{"type": "ensemble", "members": []}]}), "members[0]"),
    "std_zero": (lambda b: _pre(b, std=[0]), "preprocessing.std[0]"),
    "std_nan": (lambda b: _pre(b, std=[math.nan]), "preprocessing.std[0]"),
    "mean_nan": (lambda b: _pre(b, mean=[math.nan]), "preprocessing.mean[0]"),
    "mean_inf": (lambda b: _pre(b, mean=[math.inf]), "preprocessing.mean[0]"),
    "channels_5": (lambda b: _pre(b, channels=5, mean=[0.5] * 5, std=[0.5] * 5), "preprocessing.channels"),
    "pre_image_size_huge": (lambda b: _pre(b, image_size=10**7), "preprocessing.image_size"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_out_of_bounds_manifest_is_refused_before_anything_is_built(bundle: Path, monkeypatch, case: str) -> None:
    from medlens.bundle import BundleError, load_bundle

    mutate, word = MANIFEST_CASES[case]
    mutate(bundle)
    import safetensors.torch

    def no_weights(*a, **k):
        raise AssertionError("the weights were read before the manifest was checked")

    monkeypatch.setattr(safetensors.torch, "load_file", no_weights)
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match="manifest.json") as err:
        load_bundle(bundle)
    assert word in str(err.value)
    assert "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 15  # counted on the meta device, not allocated


@pytest.mark.parametrize("case", ["in_chans_1e7", "vit_huge_ensemble", "std_zero", "unknown_key", "channels_5"])
def test_out_of_bounds_manifest_is_one_line_in_the_cli(bundle: Path, tmp_path: Path, case: str) -> None:
    mutate, word = MANIFEST_CASES[case]
    mutate(bundle)
    (tmp_path / "x.png").write_bytes(good_png())
    assert_one_line(cli("predict", bundle, tmp_path / "x.png"), word)


def test_weights_file_larger_than_the_architecture_is_refused_unread(bundle: Path) -> None:
    from medlens.bundle import BundleError, load_bundle

    w = bundle / "model.safetensors"
    os.truncate(w, 2 * 2**30)  # a sparse 2 GB file behind a resnet10t manifest (no disk used, nothing read)
    with pytest.raises(BundleError, match="weights file has"):
        load_bundle(bundle)


def test_create_model_applies_the_same_bounds() -> None:
    from medlens.models import ArchitectureError, create_model

    with pytest.raises(ArchitectureError, match="architecture.in_chans"):
        create_model({"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 5, "image_size": 32})
    with pytest.raises(ArchitectureError, match="unknown key 'colour'"):
        create_model({"type": "classifier", "backbone": "resnet10t", "colour": "blue"})


# ------------------------------------------------------------------------------------------ no hub from a bundle
def test_pretrained_true_in_a_manifest_never_reaches_for_the_hub(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    from medlens.bundle import load_bundle
    from medlens.inference import Predictor

    before = Predictor(load_bundle(bundle)).predict_arrays([np.full((32, 32), 90, np.uint8)])

    def no_hub(*a, **k):
        raise AssertionError("loading a bundle reached for the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr("medlens.models.pretrained._download", no_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    _arch(bundle, pretrained=True)
    after = Predictor(load_bundle(bundle)).predict_arrays([np.full((32, 32), 90, np.uint8)])
    np.testing.assert_array_equal(before, after)  # the bundle's own weights, nothing else

    arch = json.loads((bundle / "manifest.json").read_text())["architecture"]
    edit_manifest(bundle, architecture={"type": "ensemble", "activation": "sigmoid", "num_outputs": 1, "members": [arch]})
    from medlens.models import model_from_manifest

    assert arch["pretrained"] is True
    model_from_manifest(json.loads((bundle / "manifest.json").read_text())["architecture"])  # members: no hub either


# ------------------------------------------------------------------------------------------ NaN is an error
@pytest.fixture
def nan_bundle(tmp_path: Path) -> Path:
    import torch

    from medlens.bundle import load_bundle, save_bundle
    from tests.unit._bundles import random_bundle

    b = load_bundle(random_bundle(tmp_path / "ok"))
    with torch.no_grad():
        b.model.head.weight.fill_(float("nan"))
    return save_bundle(b.model, b.manifest, tmp_path / "nan")


def test_nan_output_is_an_error_naming_the_bundle(nan_bundle: Path, tmp_path: Path) -> None:
    from medlens.inference import Predictor

    p = Predictor.from_bundle(nan_bundle)
    with pytest.raises(ValueError, match="not finite") as err:
        p.predict([np.full((32, 32), 90, np.uint8)])
    assert str(nan_bundle) in str(err.value)
    (tmp_path / "x.png").write_bytes(good_png())
    res = cli("predict", nan_bundle, tmp_path / "x.png")
    assert_one_line(res, "not finite")
    assert "negative" not in res.stdout


# ------------------------------------------------------------------------------------------ atomic publishing
def _fake_bundle(path: Path, version: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(version)
    (path / "model.safetensors").write_text(version * 3)
    return path


def _complete(path: Path) -> str | None:
    """The version of the complete bundle at ``path``, read as one folder (its files through one folder handle, so a
    replacement between two reads cannot mix versions), or None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        def read(name: str) -> str:
            with open(name, encoding="utf-8", opener=lambda n, flags: os.open(n, flags, dir_fd=fd)) as f:
                return f.read()

        v = read("manifest.json")
        return v if read("model.safetensors") == v * 3 else None
    except OSError:
        return None
    finally:
        os.close(fd)


_KILL_AT = textwrap.dedent("""
    import os, sys
    from medlens import runfolder
    step, n = int(sys.argv[3]), [0]
    real_replace, real_rmtree, real_exchange = os.replace, runfolder.shutil.rmtree, runfolder.exchange_paths
    def tick():
        n[0] += 1
        if n[0] == step:
            os._exit(9)  # killed here: no except, no finally
    def replace(a, b):
        tick(); real_replace(a, b)
    def exchange(a, b):
        tick(); return real_exchange(a, b)
    def rmtree(p, *a, **k):
        tick(); real_rmtree(p, *a, **k)
    runfolder.os.replace, runfolder.exchange_paths, runfolder.shutil.rmtree = replace, exchange, rmtree
    runfolder.replace_dir_atomically(sys.argv[1], sys.argv[2])
    os._exit(0)
""")


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_a_kill_at_any_step_of_publishing_leaves_a_bundle_in_place(tmp_path: Path, step: int) -> None:
    from medlens import runfolder

    final = _fake_bundle(tmp_path / "bundle", "old")
    new = _fake_bundle(tmp_path / ".bundle.tmp1", "new")
    r = subprocess.run([sys.executable, "-c", _KILL_AT, str(new), str(final), str(step)], env={**os.environ, "PYTHONPATH": SRC},
                       timeout=60)
    assert r.returncode in (0, 9)
    assert _complete(final) in ("old", "new")  # at its own path, not in a backup: no reader ever misses it
    runfolder.replace_dir_atomically(_fake_bundle(tmp_path / ".bundle.tmp2", "newer"), final)  # the next save tidies up
    assert _complete(final) == "newer"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".bundle.tmp1")) == ["bundle"]


def test_readers_never_find_the_bundle_missing_while_it_is_replaced(tmp_path: Path, monkeypatch) -> None:
    """Every look at the path finds a complete bundle. (The previous version is deleted once replaced; a reader still
    inside that old folder can see it go, which is what removing it means: here the old folders are kept, so the
    test sees the publishing steps alone. With two renames instead of one exchange this test sees hundreds of misses.)"""
    from medlens import runfolder

    kept = iter(range(10**6))
    monkeypatch.setattr(runfolder.shutil, "rmtree", lambda p, *a, **k: os.rename(p, tmp_path / f"kept{next(kept)}"))
    final = _fake_bundle(tmp_path / "bundle", "v0")
    stop, misses, reads = threading.Event(), [], [0]

    def reader() -> None:  # what a server or a scheduler polling the path sees: one look at the folder
        while not stop.is_set():
            try:
                if not {"manifest.json", "model.safetensors"} <= set(os.listdir(final)):
                    misses.append("incomplete")
            except FileNotFoundError:
                misses.append("missing")
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 150):
            runfolder.replace_dir_atomically(_fake_bundle(tmp_path / f".bundle.tmp{i}", f"v{i}"), final)
    finally:
        stop.set()
        t.join()
    assert reads[0] > 100 and misses == []
    assert _complete(final) == "v149"
    monkeypatch.undo()
