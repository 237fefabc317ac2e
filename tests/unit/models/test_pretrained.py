"""Pretrained weights really load: from a Hugging Face cache laid out as huggingface_hub writes it, offline, or a file.

The cache is built in ``tmp_path`` with random ResNet-18 weights (no network): ``HF_HOME/hub/
models--timm--resnet18.a1_in1k/{blobs/<sha256>, refs/main, snapshots/<commit>/{model.safetensors, config.json}}``,
snapshot files being symlinks to blobs, as on disk after ``hf_hub_download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("safetensors")
pytest.importorskip("huggingface_hub")

from safetensors.torch import load_file, save_file  # noqa: E402

from medlens.models import (  # noqa: E402
    PretrainedWeightsError,
    check_pretrained_available,
    create_model,
    resolve_pretrained,
)
from medlens.models.classifier import ImageClassifier  # noqa: E402

REPO = "timm/resnet18.a1_in1k"
COMMIT = "5a2cdbb9b0f4e2c4a1f1b3d7e0d9c8b7a6f5e4d3"  # a made-up snapshot commit


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random ResNet-18 ImageNet-shaped weights (fc 1000), saved once as safetensors."""
    torch.manual_seed(123)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _timm_config() -> dict:
    """config.json as timm publishes it for resnet18.a1_in1k."""
    cfg = timm.models.get_pretrained_cfg("resnet18").to_dict()
    keep = ("tag", "custom_load", "input_size", "test_input_size", "fixed_input_size", "interpolation", "crop_pct",
            "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv", "classifier")
    return {"architecture": "resnet18", "num_classes": 1000, "num_features": 512, "global_pool": "avg",
            "pretrained_cfg": {k: cfg[k] for k in keep if k in cfg}}


def make_hub_cache(hf_home: Path, weights: Path) -> Path:
    """The huggingface_hub cache layout of timm/resnet18.a1_in1k under ``hf_home``; returns the snapshot file."""
    repo = hf_home / "hub" / f"models--{REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)  # no trailing newline, as huggingface_hub writes it
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    blob = repo / "blobs" / _sha(weights)  # LFS files are stored under their sha256
    try:
        os.link(weights, blob)
    except OSError:
        shutil.copyfile(weights, blob)
    config = json.dumps(_timm_config(), indent=2).encode()
    cfg_blob = repo / "blobs" / hashlib.sha1(config).hexdigest()  # small files: the git blob id
    cfg_blob.write_bytes(config)
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    (snap / "config.json").symlink_to(os.path.relpath(cfg_blob, snap))
    return snap / "model.safetensors"


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _assert_backbone_equals_file(model: ImageClassifier, weights: Path, skip: tuple[str, ...] = ()) -> None:
    src = load_file(str(weights))
    got = model.backbone.state_dict()
    compared = 0
    for k, v in got.items():
        if k in skip:
            continue
        assert torch.equal(v, src[k]), k
        compared += 1
    assert compared >= len(got) - len(skip) and compared > 100  # every backbone tensor, BN statistics included


def test_default_tag_of_resnet18_is_the_one_cached_here() -> None:
    assert timm.models.get_pretrained_cfg("resnet18").hf_hub_id == REPO


def test_true_loads_the_default_tag_from_the_hf_cache_offline(offline_home: Path, weights: Path) -> None:
    snap = make_hub_cache(offline_home, weights)
    m = ImageClassifier("resnet18", num_outputs=2, in_chans=3, pretrained=True, image_size=224, small_input=False)
    _assert_backbone_equals_file(m, weights)
    assert m.pretrained_info == {"source": f"hf-hub:{REPO}", "revision": COMMIT, "sha256": _sha(weights)}
    info = resolve_pretrained("resnet18", True)
    assert info["file"] == str(snap) and info["sha256"] == _sha(weights)
    assert check_pretrained_available("resnet18", True) == {"source": f"hf-hub:{REPO}", "file": str(snap)}


def test_grey_input_sums_the_first_conv_over_rgb(offline_home: Path, weights: Path) -> None:
    make_hub_cache(offline_home, weights)
    m = ImageClassifier("resnet18", num_outputs=1, in_chans=1, pretrained=True, image_size=224, small_input=False)
    rgb = load_file(str(weights))["conv1.weight"]
    assert m.backbone.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(m.backbone.conv1.weight.detach(), rgb.sum(dim=1, keepdim=True))
    _assert_backbone_equals_file(m, weights, skip=("conv1.weight",))


def test_small_input_stem_keeps_every_other_pretrained_layer(offline_home: Path, weights: Path) -> None:
    make_hub_cache(offline_home, weights)
    m = ImageClassifier("resnet18", num_outputs=1, in_chans=1, pretrained=True, image_size=28)  # auto: 3x3 stride-1 stem
    assert m.backbone.conv1.kernel_size == (3, 3)
    _assert_backbone_equals_file(m, weights, skip=("conv1.weight",))
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 1)


@pytest.mark.parametrize("ref", [REPO, f"hf-hub:{REPO}", f"{REPO}@{COMMIT}"])
def test_an_explicit_hub_id(offline_home: Path, weights: Path, ref: str) -> None:
    make_hub_cache(offline_home, weights)
    m = create_model({"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 3, "image_size": 64,
                      "small_input": False, "pretrained": ref})
    _assert_backbone_equals_file(m, weights)
    assert m.pretrained_info["sha256"] == _sha(weights) and m.pretrained_info["source"].startswith(f"hf-hub:{REPO}")


def test_empty_cache_offline_is_one_line_that_says_where_to_put_the_file(offline_home: Path) -> None:
    for call in (lambda: check_pretrained_available("resnet18", True), lambda: ImageClassifier("resnet18", pretrained=True)):
        with pytest.raises(PretrainedWeightsError) as ei:
            call()
        msg = str(ei.value)
        assert "\n" not in msg and isinstance(ei.value, ValueError)
        assert "'resnet18'" in msg and REPO in msg
        assert str(offline_home / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots") in msg
        assert "model.pretrained: /path/to/model.safetensors" in msg and "HF_HUB_OFFLINE" in msg


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_file(tmp_path: Path, weights: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local file needs no hub
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        shutil.copyfile(weights, path)
    else:
        torch.save(load_file(str(weights)), path)  # read back with torch.load(weights_only=True)
    m = ImageClassifier("resnet18", num_outputs=1, in_chans=3, pretrained=str(path), small_input=False)
    _assert_backbone_equals_file(m, weights)
    match = m.pretrained_info.pop("match")  # a local file's match report: every tensor by name, the ImageNet fc left over
    assert m.pretrained_info == {"source": str(path), "revision": None, "sha256": _sha(path)}
    assert match["matched"] == match["backbone_tensors"] == len(m.backbone.state_dict()) and match["missing"] == 0
    assert match["unexpected"] == 2 and match["examples"]["unexpected"] == ["fc.bias", "fc.weight"]
    with pytest.raises(PretrainedWeightsError, match="weights file not found: .*gone.safetensors"):
        check_pretrained_available("resnet18", str(tmp_path / "gone.safetensors"))


def test_a_file_for_another_network_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}, str(path))
    with pytest.raises(PretrainedWeightsError, match=r"does not fit backbone 'resnet18' \(under 50 % .*shape mismatches") as ei:
        ImageClassifier("resnet18", pretrained=str(path))
    assert "\n" not in str(ei.value)


def test_online_and_not_cached_downloads_into_the_hf_cache(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("medlens.models.pretrained.hub_unreachable", lambda *a, **k: None)  # the hub answers
    assert check_pretrained_available("resnet18", True) == {"source": f"hf-hub:{REPO}", "file": None}  # will download
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None, **_):
        calls.append((repo_id, filename, cache_dir))
        return str(make_hub_cache(Path(cache_dir).parent, weights))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    info = resolve_pretrained("resnet18", True)
    assert calls == [(REPO, "model.safetensors", str(home / "hub"))]
    assert info["sha256"] == _sha(weights) and info["revision"] == COMMIT


def test_false_builds_random_weights_and_the_record_is_not_an_argument(weights: Path) -> None:
    m = create_model({"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 3, "image_size": 64,
                      "pretrained_weights": {"source": f"hf-hub:{REPO}", "revision": COMMIT, "sha256": "0" * 64}})
    assert m.pretrained_info is None
    assert not torch.equal(m.backbone.conv1.weight, load_file(str(weights))["conv1.weight"])
    assert resolve_pretrained("resnet18", False) is None and check_pretrained_available("resnet18", False) is None


def test_a_file_with_other_tensor_names_is_not_silently_ignored(tmp_path: Path, weights: Path) -> None:
    path = tmp_path / "ssl.safetensors"
    save_file({f"head.{k}": v for k, v in load_file(str(weights)).items()}, str(path))  # no prefix medlens strips
    with pytest.raises(PretrainedWeightsError, match=r"does not fit backbone 'resnet18' \(under 50 % .*matched 0 of") as ei:
        ImageClassifier("resnet18", pretrained=str(path))
    assert "\n" not in str(ei.value)


@pytest.mark.slow
def test_cli_train_offline_empty_cache_fails_before_data_and_populated_cache_trains_from_the_weights(
    offline_home: Path, weights: Path, tmp_path: Path
) -> None:
    """`HF_HUB_OFFLINE=1 medlens train CFG --set model.pretrained=true`: one line before any data is read with an empty
    cache; with the cache populated, the bundle's frozen backbone is the cached weights, and the manifest says so."""
    import yaml
    from typer.testing import CliRunner

    from medlens.bundle import load_bundle
    from medlens.cli import app

    def write(name: str, data: dict) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({
            "seed": 0, "data": {**data, "image_size": 32, "channels": 3},
            "model": {"backbone": "resnet18", "small_input": False},
            "optim": {"freeze_backbone": True},
            "trainer": {"max_epochs": 1, "progress_bar": False, "channels_last": False, "calibrate": False},
            "output": {"dir": str(tmp_path / "runs"), "name": "pt", "overwrite": True},
        }))
        return path

    # a data file that does not exist: reading data would fail with another message
    cfg = write("missing-data.yaml", {"kind": "csv", "path": str(tmp_path / "never-read.csv"), "label_column": "label"})
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(cfg), "--set", "model.pretrained=true"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("DEBUG: ", "INFO: ", "WARNING: "))]  # log records aside
    assert len(lines) == 1 and "resnet18" in lines[0] and "never-read" not in lines[0], lines

    snapshot = make_hub_cache(offline_home, weights)
    ok = runner.invoke(app, ["train", str(write("run.yaml", {"kind": "synthetic", "num_samples": 48})), "--set", "model.pretrained=true"])
    assert ok.exit_code == 0, ok.output
    bundle = load_bundle(tmp_path / "runs" / "pt" / "bundle")
    _assert_backbone_equals_file(bundle.model, snapshot, skip=("fc.weight", "fc.bias"))
    assert bundle.manifest.architecture["pretrained_weights"]["sha256"] == _sha(weights)
