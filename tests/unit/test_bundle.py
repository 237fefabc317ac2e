"""Bundles: exact round trip, tamper detection, manifest validation, no pickle, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.bundle import (
    MANIFEST,
    WEIGHTS,
    BundleError,
    Manifest,
    load_bundle,
    read_manifest,
    save_bundle,
    update_manifest,
)
from medlens.data.labels import LabelSpace
from medlens.data.transforms import resolve_preprocessing
from medlens.models import create_model

ARCH = {"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 28, "small_input": "auto"}


def _model_and_manifest() -> tuple[torch.nn.Module, Manifest]:
    torch.manual_seed(0)
    model = create_model(ARCH)
    # non-trivial BatchNorm statistics, so buffers are checked too
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 28, 28))
    model.eval()
    manifest = Manifest(
        architecture=dict(ARCH),
        label_space=LabelSpace(("normal", "pneumonia"), "binary"),
        preprocessing=resolve_preprocessing(28, 1),
        thresholds=[0.37],
        temperature=1.3,
        metrics={"test": {"auroc_macro": 0.9, "nan_metric": float("nan")}},
        config={"seed": 0},
        intended_use="tests",
    )
    return model, manifest


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model, manifest = _model_and_manifest()
    path = save_bundle(model, manifest, tmp_path_factory.mktemp("b") / "bundle")
    return path, model


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip_identical_outputs(saved) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, MANIFEST])
    b = load_bundle(path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), b.model(x))
    sd_a, sd_b = model.state_dict(), b.model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not b.model.training
    m = b.manifest
    assert m.label_names == ["normal", "pneumonia"] and m.task == "binary"
    assert m.thresholds == [0.37] and m.temperature == 1.3
    assert m.preprocessing == resolve_preprocessing(28, 1)
    assert m.metrics["test"]["auroc_macro"] == 0.9
    assert m.metrics["test"]["nan_metric"] is None  # NaN written as JSON null, the file stays valid JSON
    assert m.versions["torch"] == torch.__version__.split("+")[0] or m.versions["torch"] == torch.__version__
    assert m.weights_sha256 and len(m.weights_sha256) == 64
    assert m.created and m.intended_use == "tests"


def test_manifest_is_plain_json_with_required_fields(saved) -> None:
    path, _ = saved
    d = json.loads((path / MANIFEST).read_text())
    for k in ("format", "format_version", "task", "label_names", "architecture", "preprocessing", "thresholds",
              "temperature", "metrics", "config", "versions", "created", "weights_sha256", "intended_use"):
        assert k in d, k
    assert d["preprocessing"] == {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]}


def test_tampered_weights_rejected(saved, tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "b")
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF  # flip bits in the last tensor's data
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError) as ei:
        load_bundle(path)
    msg = str(ei.value)
    assert WEIGHTS in msg and "checksum" in msg and "\n" not in msg


def test_truncated_weights_rejected_even_without_checksum(saved, tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "b")
    (path / WEIGHTS).write_bytes((path / WEIGHTS).read_bytes()[:1000])
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    with pytest.raises(BundleError, match="safetensors"):
        load_bundle(path, verify=False)


@pytest.mark.parametrize("field", ["architecture", "label_names", "task", "preprocessing", "weights_sha256"])
def test_manifest_missing_field(saved, tmp_path: Path, field: str) -> None:
    path = _copy(saved[0], tmp_path / "b")
    d = json.loads((path / MANIFEST).read_text())
    del d[field]
    (path / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(BundleError, match=repr(field)):
        load_bundle(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="something-else"), "not a medlens bundle"),
        (lambda d: d.update(format_version=99), "newer"),
        (lambda d: d.update(label_names=None), "invalid manifest"),
        (lambda d: d.update(label_names=["a", "b", "c"]), "binary"),
        (lambda d: d["preprocessing"].pop("mean"), "mean"),
        (lambda d: d["architecture"].update(num_outputs=3), "do not fit"),
    ],
)
def test_manifest_invalid(saved, tmp_path: Path, mutate, match: str) -> None:
    path = _copy(saved[0], tmp_path / "b")
    d = json.loads((path / MANIFEST).read_text())
    mutate(d)
    (path / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_not_json_and_not_a_bundle(saved, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")
    path = _copy(saved[0], tmp_path / "b")
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(path)
    path = _copy(saved[0], tmp_path / "c")
    (path / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(path)


def test_no_pickle_on_load(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def boom(*a, **k):
        raise AssertionError("bundles must not be unpickled")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    b = load_bundle(saved[0])
    with torch.no_grad():
        assert b.model(torch.zeros(1, 1, 28, 28)).shape == (1, 1)
    # and the weights file is a safetensors file: an 8-byte header length and a JSON header
    raw = (saved[0] / WEIGHTS).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + n])["__metadata__"] == {"format": "pt"}


def test_overwrite_and_no_temp_leftovers(tmp_path: Path) -> None:
    model, manifest = _model_and_manifest()
    dest = tmp_path / "run" / "bundle"
    save_bundle(model, manifest, dest)
    first = (dest / WEIGHTS).read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_bundle(model, manifest, dest)
    assert (dest / WEIGHTS).read_bytes() != first
    load_bundle(dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bundle"]
    with pytest.raises(FileExistsError):
        save_bundle(model, manifest, dest, overwrite=False)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    model, manifest = _model_and_manifest()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(model, manifest, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_bundle(saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    dest = _copy(saved[0], tmp_path / "bundle")
    before = (dest / WEIGHTS).read_bytes()
    model, manifest = _model_and_manifest()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_bundle(model, manifest, dest)
    assert (dest / WEIGHTS).read_bytes() == before
    load_bundle(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_update_manifest(saved, tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "b")
    update_manifest(path, thresholds=[0.5], metrics={"x": np.float32(0.25)})
    m = read_manifest(path)
    assert m.thresholds == [0.5] and m.metrics == {"x": 0.25}
    load_bundle(path)  # weights and checksum untouched
    with pytest.raises(AttributeError):
        update_manifest(path, no_such_field=1)
