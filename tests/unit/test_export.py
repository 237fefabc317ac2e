"""ONNX export: ONNX Runtime and PyTorch agree within 1e-4 on real test images for every architecture the shipped
configs use, decisions are identical, the batch axis is dynamic, and a tampered model.onnx is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.bundle import MANIFEST, WEIGHTS, BundleError, read_manifest
from medlens.export import ONNX_FILE, export_onnx
from medlens.inference import Predictor
from medlens.inference.onnx import OnnxPredictor
from tests.unit._bundles import random_bundle

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4  # max abs difference of probabilities (anomaly: of scores)
LARGE = 96  # above this input size, compare on a subset of the test images (a 224-px ResNet-18 is slow on CPU)


def _config_architectures() -> list[tuple[str, dict, str]]:
    """(id, architecture dict, task) for each distinct network in configs/*.yaml, as training would build it."""
    from types import SimpleNamespace

    from medlens.config import load_config
    from medlens.data.labels import LabelSpace
    from medlens.tasks import get_task
    from medlens.tasks.anomaly import architecture_for_anomaly

    seen: dict[str, tuple[str, dict, str]] = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        if getattr(cfg.data, "task", None) == "anomaly":
            arch, task = architecture_for_anomaly(cfg), "anomaly"
        else:
            # 3 outputs, and 7 metadata columns for fusion configs: widths do not change the network's layers
            enc = SimpleNamespace(dim=7, architecture=dict) if cfg.data.metadata is not None else None
            arch, task = get_task("multilabel").architecture(cfg, LabelSpace(("a", "b", "c"), "multilabel"), enc), "multilabel"
        key = json.dumps({k: v for k, v in arch.items() if k not in ("num_outputs", "drop_rate", "drop_path_rate")}, sort_keys=True)
        if key not in seen:
            name = arch.get("backbone", "") if arch["type"] in ("classifier", "fusion") else ""
            seen[key] = (f"{path.stem}-{arch['type']}-{name}-{arch['image_size']}px-{arch['in_chans']}ch", arch, task)
    return list(seen.values())


ARCHS = _config_architectures()


@pytest.fixture(scope="module")
def test_images(pneumonia_npz: Path, nih_dir: Path) -> dict[str, list[np.ndarray]]:
    """PneumoniaMNIST test split (624, 28 px grey) and NIH NIH1000 test split (200, 64 px PNG)."""
    from medlens.data.io import load_image

    pn = list(np.load(pneumonia_npz)["test_images"])
    nih = [load_image(p) for p in sorted((nih_dir / "test").glob("*/*.png"))]
    assert len(pn) == 624 and len(nih) >= 200
    return {"pneumoniamnist": pn, "nih": nih}


def _bundle_for(arch: dict, task: str, path: Path) -> Path:
    if task == "anomaly":
        from medlens.models.autoencoder import ScoreSpec

        spec = ScoreSpec(error_map="distance" if arch["type"] == "patchcore" else "mse", mean=(0.5,) * arch["in_chans"], std=(0.5,) * arch["in_chans"]).to_dict()
        return random_bundle(path, arch=arch, task="anomaly", names=("normal", "abnormal"), channels=arch["in_chans"],
                             image_size=arch["image_size"], thresholds=[1.0], task_section=spec)
    k = arch["num_outputs"]
    return random_bundle(path, arch=arch, task="multilabel", names=tuple(f"finding_{i}" for i in range(k)),
                         channels=arch["in_chans"], image_size=arch["image_size"], thresholds=[0.45, 0.5, 0.55], temperature=0.5)


def test_configs_yield_architectures() -> None:
    types = {a["type"] for _, a, _ in ARCHS}
    assert "classifier" in types and len(ARCHS) >= 2, ARCHS


#: the architectures compared in the default run (a 28 px and a 224 px classifier, every anomaly model); the others
#: run with -m heavy (~13 s each)
DEFAULT_PARITY = ("breastmnist-classifier", "jsonl_example-classifier")


def _parity_params() -> list:
    return [pytest.param(a, t, id=i, marks=() if t == "anomaly" or i.startswith(DEFAULT_PARITY) else pytest.mark.heavy) for i, a, t in ARCHS]


@pytest.mark.slow
@pytest.mark.parametrize("arch,task", _parity_params())
def test_onnx_matches_torch_on_real_test_images(arch: dict, task: str, test_images, tmp_path: Path) -> None:
    bundle = _bundle_for(arch, task, tmp_path / "bundle")
    onnx_path = export_onnx(bundle)
    assert onnx_path == bundle / ONNX_FILE
    torch_p = Predictor.from_bundle(bundle, batch_size=64)
    onnx_p = Predictor.from_bundle(bundle, backend="onnx", batch_size=64)
    assert isinstance(onnx_p, OnnxPredictor)
    rng = np.random.default_rng(0)
    for name, imgs in test_images.items():
        # a spread of each test split, not all of it: 624 + 200 images through both runtimes cost ~30 s per
        # architecture on 2 cores, and parity is a property of the graph, not of the image count
        imgs = imgs[:: max(1, len(imgs) // (48 if arch["image_size"] > LARGE else 160))]
        meta = rng.normal(size=(len(imgs), arch["meta_dim"])).astype(np.float32) if arch["type"] == "fusion" else None
        a = torch_p.predict_arrays(imgs, meta)
        b = onnx_p.predict_arrays(imgs, meta)
        assert a.shape == b.shape == (len(imgs), 1 if task == "anomaly" else 3)
        diff = float(np.abs(a - b).max())
        print(f"{arch['type']}/{arch.get('backbone', '')} {arch['image_size']}px on {name} ({len(imgs)} images): max |torch - onnx| = {diff:.2e}")
        assert diff < TOL, f"{name}: max |torch - onnx| = {diff:.2e}"
        # decisions: identical wherever the value is not within the numerical difference of its threshold
        srcs = [str(i) for i in range(len(imgs))]
        pa, pb = torch_p.to_predictions(a, srcs), onnx_p.to_predictions(b, srcs)
        thr = np.asarray(torch_p.manifest.thresholds, dtype=np.float64)
        near = (np.abs(a - thr[None, : a.shape[1]]) <= diff).any(axis=1)
        assert near.mean() < 0.01
        for x, y, n in zip(pa, pb, near, strict=True):
            if not n:
                assert torch_p.task.outcome(x, torch_p.manifest) == onnx_p.task.outcome(y, onnx_p.manifest)
                assert [f.decision for f in torch_p.task.findings(x, torch_p.manifest)] == [
                    f.decision for f in onnx_p.task.findings(y, onnx_p.manifest)]
        if task != "anomaly":
            assert np.unique(np.round(a, 6)).size > 3  # the outputs vary (an untrained network only slightly), so agreement is not trivial


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_bundle(tmp_path_factory.mktemp("e") / "bundle", backbone="test_resnet", image_size=32, channels=3, task="multiclass", names=("a", "b", "c"), temperature=0.7)


def _imgs(n: int, seed: int = 0, shape=(40, 33, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_dynamic_batch_tta_and_manifest(small_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx_only"
    path = export_onnx(small_bundle, out)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, ONNX_FILE]
    m = read_manifest(out)
    src = read_manifest(small_bundle)
    assert m.label_names == ["a", "b", "c"] and m.preprocessing == src.preprocessing
    assert m.temperature == 0.7 and m.thresholds == src.thresholds and m.task == "multiclass"
    info = m.extra["onnx"]
    assert info["file"] == ONNX_FILE and len(info["sha256"]) == 64 and info["max_abs_diff"] < 1e-4
    assert "onnx" not in (src.extra or {})  # exporting elsewhere leaves the bundle untouched
    imgs = _imgs(9)
    ref = Predictor.from_bundle(small_bundle).predict_arrays(imgs)
    for bs in (1, 4, 64):  # batch sizes other than the traced one
        got = OnnxPredictor.from_bundle(path, batch_size=bs).predict_arrays(imgs)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    t_tta = Predictor.from_bundle(small_bundle, tta=True).predict_arrays(imgs)
    o_tta = Predictor.from_bundle(out, backend="onnx", tta=True).predict_arrays(imgs)
    np.testing.assert_allclose(o_tta, t_tta, atol=1e-5)
    assert np.abs(t_tta - ref).max() > 1e-6
    preds = Predictor.from_bundle(out, backend="onnx").predict(imgs + [b"junk"])
    assert [p.ok for p in preds] == [True] * 9 + [False]


def test_onnx_only_folder_cannot_explain_but_says_why(small_bundle: Path, tmp_path: Path) -> None:
    from medlens.interpret import explain

    out = tmp_path / "o"
    export_onnx(small_bundle, out)
    p = Predictor.from_bundle(out, backend="onnx")
    with pytest.raises(ValueError, match=r"PyTorch weights \(model.safetensors\)"):
        explain(p, _imgs(1)[0])
    # a bundle with both files explains through the ONNX predictor too
    b = Path(shutil.copytree(small_bundle, tmp_path / "both"))
    export_onnx(b)
    exps = explain(Predictor.from_bundle(b, backend="onnx"), _imgs(1)[0])
    assert exps and exps[0].heatmap.shape == (40, 33)


def test_tampered_or_unrecorded_onnx_is_refused(small_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    export_onnx(small_bundle, out)
    data = bytearray((out / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum does not match"):
        OnnxPredictor.from_bundle(out)
    man = json.loads((out / MANIFEST).read_text())
    del man["extra"]["onnx"]
    (out / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="not recorded"):
        OnnxPredictor.from_bundle(out)
    (out / ONNX_FILE).write_bytes(b"\x08\x07garbage")
    with pytest.raises(BundleError):
        OnnxPredictor.from_bundle(out, verify=False)


def test_onnx_file_size_is_bounded_before_it_is_read(small_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """model.onnx is read whole into memory: its size is checked against the manifest's record and protobuf's 2 GiB
    limit first (a padded 150 GB file would otherwise be read before the checksum fails)."""
    import medlens.inference.onnx as onnx_mod

    out = tmp_path / "t"
    export_onnx(small_bundle, out)
    size = (out / ONNX_FILE).stat().st_size
    assert json.loads((out / MANIFEST).read_text())["extra"]["onnx"]["bytes"] == size
    reads: list[Path] = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    with open(out / ONNX_FILE, "ab") as f:
        f.truncate(size + 4096)  # sparse padding
    with pytest.raises(BundleError, match="but the manifest records"):
        OnnxPredictor.from_bundle(out)
    assert not [p for p in reads if p.name == ONNX_FILE]
    monkeypatch.setattr(onnx_mod, "MAX_ONNX_BYTES", size)
    with pytest.raises(BundleError, match="more than an ONNX model file can hold"):
        OnnxPredictor.from_bundle(out, verify=False)


def test_bundle_without_onnx_is_exported_in_memory(small_bundle: Path, tmp_path: Path) -> None:
    b = Path(shutil.copytree(small_bundle, tmp_path / "fresh"))
    p = Predictor.from_bundle(b, backend="onnx")
    assert not (b / ONNX_FILE).exists()  # nothing written into the user's bundle
    np.testing.assert_allclose(p.predict_arrays(_imgs(3)), Predictor.from_bundle(b).predict_arrays(_imgs(3)), atol=1e-5)
    (b / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="neither"):
        OnnxPredictor.from_bundle(b)


def test_fusion_model_exports_with_two_inputs(tmp_path: Path) -> None:
    arch = {"type": "fusion", "backbone": "test_resnet", "num_outputs": 2, "in_chans": 1, "image_size": 32, "meta_dim": 5, "meta_hidden": [16, 8], "meta_dropout": 0.0}
    b = random_bundle(tmp_path / "f", arch=arch, task="multilabel", names=("x", "y"), thresholds=[0.5, 0.5])
    path = export_onnx(b)
    assert read_manifest(b).extra["onnx"]["inputs"] == ["image", "metadata"]
    imgs = _imgs(6, shape=(32, 32))
    meta = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    o = OnnxPredictor.from_bundle(path)
    np.testing.assert_allclose(o.predict_arrays(imgs, meta), Predictor.from_bundle(b).predict_arrays(imgs, meta), atol=1e-5)
    meta2 = meta.copy()
    meta2[:, 0] += 3.0
    assert np.abs(o.predict_arrays(imgs, meta2) - o.predict_arrays(imgs, meta)).max() > 1e-6  # metadata is used
    with pytest.raises(ValueError, match="needs metadata"):
        o.predict_arrays(imgs)


def test_export_cli(small_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medlens.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["export", str(small_bundle), "--format", "onnx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / ONNX_FILE).is_file() and "exported" in r.output
    r = CliRunner().invoke(app, ["export", str(small_bundle), "--format", "tflite"])
    assert r.exit_code == 2 and "unknown export format" in r.output
