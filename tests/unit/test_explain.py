"""Explanations: the map of a bright patch that decides the class peaks inside the patch; heatmaps are at the
original image size; target layers are found for every timm family the configs use, at least 7x7 at the bundle's
input size, with a warning for a 2x2 layer asked for by name; labels and methods."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from medlens.bundle import Manifest, save_bundle
from medlens.data.labels import LabelSpace
from medlens.data.transforms import make_transform, resolve_preprocessing
from medlens.inference import Predictor
from medlens.interpret import Explanation, explain, list_methods, overlay_png, write_explanations
from medlens.models import create_model
from medlens.tasks.classification.cam import (
    MIN_MAP_SIDE,
    choose_target_layer,
    default_labels,
    find_target_layer,
)
from tests.unit._bundles import random_bundle

ROOT = Path(__file__).resolve().parents[2]
GRADIENT_METHODS = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam"]


def test_methods_include_the_required_four() -> None:
    assert {"gradcam", "gradcam++", "eigencam", "layercam"} <= set(list_methods())


# ------------------------------------------------------------------------------------------ target layers
FAMILIES = [  # (timm backbone, expected module) -- one per family the configs use or the docs promise
    ("resnet10t", "backbone.layer4"),
    ("resnet18", "backbone.layer4"),
    ("test_resnet", "backbone.layer4"),
    ("efficientnet_b0", "backbone.bn2"),
    ("test_efficientnet", "backbone.bn2"),
    ("convnext_atto", "backbone.stages.3"),
    ("densenet121", "backbone.features.norm5"),
]


def _config_backbones() -> set[str]:
    from medlens.config import load_config

    out = set()
    for p in (ROOT / "configs").glob("*.yaml"):
        cfg = load_config(p)
        if getattr(cfg.data, "task", None) != "anomaly":
            out.add(cfg.model.backbone)
    return out


def test_every_config_backbone_has_a_family_rule() -> None:
    known = {b for b, _ in FAMILIES}
    assert _config_backbones() <= known, f"add {_config_backbones() - known} to FAMILIES"


@pytest.mark.parametrize("backbone,expected", FAMILIES)
def test_target_layer_is_the_last_conv_stage(backbone: str, expected: str) -> None:
    m = create_model({"type": "classifier", "backbone": backbone, "num_outputs": 2, "in_chans": 1, "image_size": 64}).eval()
    name, layer = find_target_layer(m)
    assert name == expected
    x = torch.zeros(1, 1, 64, 64)
    seen = {}
    h = layer.register_forward_hook(lambda _m, _i, o: seen.update(shape=tuple(o.shape)))
    with torch.no_grad():
        feats = m.forward_features(x)
    h.remove()
    assert seen["shape"] == tuple(feats.shape)  # the map Grad-CAM sees is the backbone's final feature map


# (timm backbone, the automatic layer at 64 px (small-input stem; its map, cells a side)): the deepest stage of >= 7x7
AT_64 = {
    "resnet10t": ("backbone.layer3", 8), "resnet18": ("backbone.layer3", 8), "test_resnet": ("backbone.layer3", 8),
    "efficientnet_b0": ("backbone.blocks.4", 8), "test_efficientnet": ("backbone.blocks.3", 8),
    "convnext_atto": ("backbone.stages.2", 8), "densenet121": ("backbone.features.denseblock3", 8),
}


@pytest.mark.parametrize("backbone,expected", FAMILIES)
def test_the_automatic_layer_is_the_deepest_with_a_7x7_map(backbone: str, expected: str) -> None:
    # at 224 px every family's last stage is 7x7: the last stage; at 64 px the deepest stage still 7x7 or more
    for size, want in ((224, (expected, 7)), (64, AT_64[backbone])):
        m = create_model({"type": "classifier", "backbone": backbone, "num_outputs": 2, "in_chans": 1, "image_size": size}).eval()
        t = choose_target_layer(m, torch.zeros(1, 1, size, size))
        assert (t.name, t.map_size[0]) == want and min(t.map_size) >= MIN_MAP_SIDE and t.warning is None
    seen = {}
    h = dict(m.named_modules())[t.name].register_forward_hook(lambda _m, _i, o: seen.update(shape=tuple(o.shape)))
    with torch.no_grad():
        m(torch.zeros(1, 1, 64, 64))
    h.remove()
    assert seen["shape"][2:] == t.map_size  # the map Grad-CAM sees


def test_a_layer_with_a_2x2_map_is_explained_with_a_warning(tmp_path: Path, caplog) -> None:
    import logging

    # the stock stride-32 stem at 64 px: layer4 is 2x2, layer2 the deepest of at least 7x7 (8x8)
    arch = {"type": "classifier", "backbone": "test_resnet", "num_outputs": 1, "in_chans": 1, "image_size": 64, "small_input": False}
    p = Predictor.from_bundle(random_bundle(tmp_path / "b", arch=arch, image_size=64))
    img = np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)
    (auto,) = explain(p, img)
    assert auto.target_layer == "backbone.layer2" and auto.warning is None
    with caplog.at_level(logging.WARNING, logger="medlens.explain"):
        (coarse,) = explain(p, img, target_layer="layer4")
    assert coarse.target_layer == "backbone.layer4" and coarse.heatmap.shape == (80, 80)
    assert coarse.warning == ("target layer backbone.layer4 has a 2x2 feature map at this model's 64x64 px input: the heatmap "
                              "can only show 2x2 regions; backbone.layer2 gives 8x8")
    assert coarse.warning in caplog.text
    (mid,) = explain(p, img, target_layer="layer3")  # 4x4: coarse, but no warning
    assert mid.warning is None
    summary = json.loads(write_explanations([coarse], tmp_path / "out", "x")[-1].read_text())
    assert summary[0]["warning"] == coarse.warning


def test_generic_search_and_layer_by_name() -> None:
    m = create_model({"type": "classifier", "backbone": "test_nfnet", "num_outputs": 1, "in_chans": 1, "image_size": 64}).eval()
    name, _ = find_target_layer(m, torch.zeros(1, 1, 64, 64))  # no family rule: found by its output shape
    assert name.startswith("backbone.") and "head" not in name
    r = create_model({"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 32})
    assert find_target_layer(r, name="layer3")[0] == "backbone.layer3"
    assert find_target_layer(r, name="backbone.layer2.0")[0] == "backbone.layer2.0"
    with pytest.raises(ValueError, match="not found.*candidates"):
        find_target_layer(r, name="layer9")


# ------------------------------------------------------------------------------------------ patch test
def _patch_detector(path: Path) -> Path:
    """A resnet10t whose decision is the mean brightness of bright regions: only a bright patch makes it positive.

    Every convolution inside the residual blocks is zero and the stem and shortcut convolutions pass channel 0
    through, so ``layer4`` channel 0 is the input (above mid-grey) average-pooled to the 4x4 grid, and the head
    reads that channel alone. The network is an exact, known patch detector, so its Grad-CAM must peak on the
    patch: any geometric slip in decoding, preprocessing, layer choice or resizing the map back shows up.
    """
    arch = {"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 32}
    model = create_model(arch).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.zero_()
                passthrough = name.startswith("backbone.conv1.") or ".downsample." in name
                if passthrough:
                    c = mod.kernel_size[0] // 2
                    mod.weight[0, 0, c, c] = 1.0
            elif isinstance(mod, nn.BatchNorm2d):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0)
        model.head.weight.zero_()
        model.head.weight[0, 0] = 20.0
        model.head.bias.fill_(-0.05)
    man = Manifest(architecture=arch, label_space=LabelSpace(("clear", "patch"), "binary"), preprocessing=resolve_preprocessing(32, 1), thresholds=[0.5])
    return save_bundle(model, man, path)


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    """Where the map is highest: the centre of its maximal plateau.

    Bilinear upsampling of a coarse map is flat between a border cell's centre and the image border, so a bare
    ``argmax`` would pick the plateau's first pixel (often the image edge); its centre is the peak.
    """
    rows, cols = np.nonzero(heatmap >= heatmap.max() - 1e-6)
    return int(round(rows.mean())), int(round(cols.mean()))


def _patch_image(h: int, w: int, box: tuple[int, int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 10, (h, w))
    r0, c0, r1, c1 = box
    img[r0:r1, c0:c1] = rng.normal(225, 8, (r1 - r0, c1 - c0))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def patch_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_bundle(_patch_detector(tmp_path_factory.mktemp("patch") / "bundle"))


def test_the_patch_alone_decides_the_class(patch_predictor: Predictor) -> None:
    clear = _patch_image(60, 90, (0, 0, 0, 0), 0)
    with_patch = _patch_image(60, 90, (10, 50, 30, 80), 0)
    p = patch_predictor.predict([clear, with_patch])
    assert p[0].predicted == ["clear"] and p[1].predicted == ["patch"]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_map_peak_lies_inside_the_patch(patch_predictor: Predictor, method: str) -> None:
    # a non-square original (60 x 90 px, resized to 32 x 32 for the model) and patches of 20 x 30 px (at least
    # one full cell of the 4 x 4 feature map) in the corners, on the edges and in the middle
    h, w, ph, pw = 60, 90, 20, 30
    rng = np.random.default_rng(0)
    boxes = [(0, 0), (h - ph, w - pw), (0, w - pw), (h - ph, 0), (20, 30)] + [tuple(rng.integers(0, [h - ph + 1, w - pw + 1])) for _ in range(5)]
    for i, (r, c) in enumerate(boxes):
        box = (int(r), int(c), int(r) + ph, int(c) + pw)
        img = _patch_image(h, w, box, i)
        (e,) = explain(patch_predictor, img, method=method)
        assert e.label == "patch" and e.probability > 0.5
        assert e.heatmap.shape == (h, w) and e.heatmap.dtype == np.float32
        pr, pc = _peak(e.heatmap)
        assert box[0] <= pr < box[2] and box[1] <= pc < box[3], f"{method}: peak {(pr, pc)} outside patch {box}"
        inside = e.heatmap[box[0] : box[2], box[1] : box[3]].mean()
        outside = (e.heatmap.sum() - e.heatmap[box[0] : box[2], box[1] : box[3]].sum()) / (h * w - ph * pw)
        assert inside > 3 * outside


def test_negative_class_map_is_not_the_positive_map(patch_predictor: Predictor) -> None:
    img = _patch_image(48, 48, (8, 8, 24, 24), 1)
    pos = explain(patch_predictor, img, label="patch")[0].heatmap
    neg = explain(patch_predictor, img, label="clear")[0].heatmap
    assert pos[8:24, 8:24].mean() > 0.5 and neg[8:24, 8:24].mean() < pos[8:24, 8:24].mean() - 0.3


@pytest.mark.slow
def test_trained_model_points_at_the_patch(tmp_path: Path) -> None:
    """A tiny ResNet trained a few steps on "bright patch anywhere = positive" localises the patch.

    A briefly trained network's map is a blob about one feature cell wider than the patch (its features fire
    on the patch's edges too), so the peak is required within one feature cell of the patch (the automatic layer
    at 32 px is layer3, an 8x8 map: 6 px cells in these 48 px images) for most positions and the map's mass must
    concentrate on the patch for every one; the exact-peak requirement is the patch-detector test above.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    S, P, n = 48, 20, 320
    y = rng.integers(0, 2, n)
    imgs = [_patch_image(S, S, (r, c, r + P, c + P) if y[i] else (0, 0, 0, 0), i) for i, (r, c) in enumerate(rng.integers(0, S - P + 1, (n, 2)))]
    arch = {"type": "classifier", "backbone": "test_resnet", "num_outputs": 1, "in_chans": 1, "image_size": 32}
    pp = resolve_preprocessing(32, 1)
    tf = make_transform(pp)
    x = torch.from_numpy(np.stack([tf(im) for im in imgs]))
    t = torch.from_numpy(y.astype(np.float32))
    model = create_model(arch)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, n, (32,), generator=g)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # BatchNorm statistics of the final weights (a few steps leave them lagging)
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
        model(x)
    model.eval()
    bundle = save_bundle(model, Manifest(architecture=arch, label_space=LabelSpace(("clear", "patch"), "binary"), preprocessing=pp, thresholds=[0.5]), tmp_path / "b")
    p = Predictor.from_bundle(bundle)
    hits, ratios = 0, []
    positions = [tuple(int(v) for v in rng.integers(2, S - P - 1, 2)) for _ in range(10)]
    for k, (r, c) in enumerate(positions):
        img = _patch_image(S, S, (r, c, r + P, c + P), 1000 + k)
        (e,) = explain(p, img)
        assert e.probability > 0.5 and e.target_layer == "backbone.layer3"
        pr, pc = _peak(e.heatmap)
        cell = S // 8
        hits += (r - cell <= pr < r + P + cell) and (c - cell <= pc < c + P + cell)
        inside = e.heatmap[r : r + P, c : c + P].mean()
        ratios.append(inside / max(1e-6, (e.heatmap.sum() - e.heatmap[r : r + P, c : c + P].sum()) / (S * S - P * P)))
    assert hits >= 7, f"peak within a feature cell of the patch for only {hits}/10 positions"
    assert min(ratios) > 1.5, ratios


# ------------------------------------------------------------------------------------------ contract
@pytest.fixture(scope="module")
def multilabel(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    b = random_bundle(tmp_path_factory.mktemp("ml") / "b", backbone="test_resnet", image_size=32, channels=3, task="multilabel", names=("a", "b", "c"), thresholds=[0.0, 1.0, 0.0])
    return Predictor.from_bundle(b)


def test_multilabel_one_map_per_label_at_original_size(multilabel: Predictor, tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    exps = explain(multilabel, img)  # default: the labels above threshold (a and c here)
    assert [e.label for e in exps] == ["a", "c"]
    pred = multilabel.predict_one(img)
    for e in exps:
        # 32 px: layer4 is 4x4, layer3 8x8 -- the deepest of at least 7x7
        assert isinstance(e, Explanation) and e.method == "gradcam" and e.target_layer == "backbone.layer3" and e.warning is None
        assert e.heatmap.shape == (50, 70) and e.heatmap.dtype == np.float32
        assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0
        assert e.probability == pytest.approx(pred.probabilities[e.label])
        png = cv2.imdecode(np.frombuffer(e.overlay_png, np.uint8), cv2.IMREAD_COLOR)
        assert png.shape == (50, 70, 3)
    only_b = explain(multilabel, img, label="b", method="eigencam")
    assert [e.label for e in only_b] == ["b"] and only_b[0].method == "eigencam"
    paths = write_explanations(exps, tmp_path / "out", "scan 1")
    names = sorted(p.name for p in paths)
    assert "scan_1_a_gradcam.png" in names and "scan_1_c_gradcam.npy" in names
    summary = json.loads((tmp_path / "out" / "scan_1_explanations.json").read_text())
    assert [s["label"] for s in summary] == ["a", "c"]
    assert np.array_equal(np.load(tmp_path / "out" / "scan_1_a_gradcam.npy"), exps[0].heatmap)


def test_errors_name_the_valid_choices(multilabel: Predictor) -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown label 'Effusion'.*a, b, c"):
        explain(multilabel, img, label="Effusion")
    with pytest.raises((KeyError, ValueError), match="unknown explanation method 'magic'.*gradcam"):
        explain(multilabel, img, method="magic")
    with pytest.raises(ValueError, match="not found"):
        explain(multilabel, img, target_layer="nope")
    with pytest.raises(ValueError, match="readable"):
        explain(multilabel, b"not an image")


def test_default_labels_per_task() -> None:
    names = ["x", "y", "z"]
    from medlens.tasks.classification import ClassPrediction as Prediction

    p = Prediction("s", None, {"x": 0.2, "y": 0.7, "z": 0.1}, {}, {}, [])
    assert default_labels(p, names, "multilabel") == ["y"]  # none above threshold: the most probable
    assert default_labels(Prediction("s", None, {}, {}, {}, ["x", "z"]), names, "multilabel") == ["x", "z"]
    assert default_labels(Prediction("s", None, {}, {}, {}, ["z"]), names, "multiclass") == ["z"]
    assert default_labels(Prediction("s", None, {}, {}, {}, ["normal"]), ["normal", "abnormal"], "binary") == ["abnormal"]


def test_explain_does_not_touch_the_predictors_network(multilabel: Predictor) -> None:
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    before = multilabel.predict_arrays([img])
    explain(multilabel, img, method="gradcam++")
    assert not any(m._forward_hooks or m._backward_hooks for m in multilabel.model.modules())
    assert all(p.grad is None for p in multilabel.model.parameters())
    np.testing.assert_array_equal(multilabel.predict_arrays([img]), before)


def test_fusion_model_is_explained_on_its_image_branch(tmp_path: Path) -> None:
    arch = {"type": "fusion", "backbone": "test_resnet", "num_outputs": 2, "in_chans": 1, "image_size": 32, "meta_dim": 4, "meta_hidden": [8], "meta_dropout": 0.0}
    p = Predictor.from_bundle(random_bundle(tmp_path / "f", arch=arch, task="multiclass", names=("u", "v")))
    exps = explain(p, np.random.default_rng(2).integers(0, 256, (40, 40), dtype=np.uint8))
    assert exps[0].target_layer == "backbone.layer3" and exps[0].heatmap.shape == (40, 40)  # 8x8 at 32 px


def test_overlay_shrinks_large_images() -> None:
    png = overlay_png(np.zeros((3000, 1500), np.uint8), np.random.default_rng(0).random((3000, 1500)).astype(np.float32), max_side=1024)
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape == (1024, 512, 3)


def test_explain_cli(tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from medlens.cli import app

    b = random_bundle(tmp_path / "b", backbone="test_resnet", image_size=32, task="multilabel", names=("Effusion", "Mass"), thresholds=[0.5, 0.5])
    img = tmp_path / "chest.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)).save(img)
    out = tmp_path / "exp"
    r = CliRunner().invoke(app, ["explain", str(b), str(img), "--label", "Effusion", "--label", "Mass", "--method", "gradcam++", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "chest_Effusion_gradcampp.png").is_file() and (out / "chest_Mass_gradcampp.png").is_file()
    r = CliRunner().invoke(app, ["explain", str(b), str(img), "--label", "Cardiomegaly", "--out", str(out)])
    assert r.exit_code == 2 and "unknown label 'Cardiomegaly'" in r.output


def test_public_api(multilabel: Predictor) -> None:
    import medlens
    import medlens.interpret as module

    assert callable(medlens.explain) and module.list_methods() == list_methods()
    exps = medlens.explain(multilabel, np.zeros((32, 32, 3), np.uint8), label="b")
    assert isinstance(exps[0], medlens.Explanation)
    assert medlens.OnnxPredictor.backend == "onnx" and callable(medlens.export_onnx)


def _corner_image(size: int, square: int, corner: int | None, seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Grey noise with, unless ``corner`` is None, a bright square in corner 0 (top left), 1 (top right), 2 (bottom
    left) or 3 (bottom right), a few pixels from the edges; returns the image and the square's box."""
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 12, (size, size))
    box = (0, 0, 0, 0)
    if corner is not None:
        r0 = int(rng.integers(0, 5)) if corner in (0, 1) else size - square - int(rng.integers(0, 5))
        c0 = int(rng.integers(0, 5)) if corner in (0, 2) else size - square - int(rng.integers(0, 5))
        box = (r0, c0, r0 + square, c0 + square)
        img[r0 : r0 + square, c0 : c0 + square] = rng.normal(220, 10, (square, square))
    return np.clip(img, 0, 255).astype(np.uint8), box


@pytest.mark.slow
def test_a_model_trained_on_a_corner_square_points_at_that_corner(tmp_path: Path) -> None:
    """A tiny ResNet trained for a few epochs on 80 px images -- positive: a bright square in one of the four corners,
    negative: none -- explained at its 64 px input by the automatic layer (layer3, 8x8; layer4 would be 4x4): for a
    square in each corner, the heatmap peaks in that corner and its mass sits on the square."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    S, P, n = 80, 24, 160
    y = rng.integers(0, 2, n)
    corners = rng.integers(0, 4, n)
    imgs = [_corner_image(S, P, int(corners[i]) if y[i] else None, i)[0] for i in range(n)]
    arch = {"type": "classifier", "backbone": "test_resnet", "num_outputs": 1, "in_chans": 1, "image_size": 64}
    pp = resolve_preprocessing(64, 1)
    tf = make_transform(pp)
    x = torch.from_numpy(np.stack([tf(im) for im in imgs]))
    t = torch.from_numpy(y.astype(np.float32))
    model = create_model(arch)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):  # epochs
        for idx in torch.randperm(n, generator=g).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # BatchNorm statistics of the final weights
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
        model(x)
    model.eval()
    bundle = save_bundle(model, Manifest(architecture=arch, label_space=LabelSpace(("clear", "square"), "binary"),
                                         preprocessing=pp, thresholds=[0.5]), tmp_path / "b")
    p = Predictor.from_bundle(bundle)
    for corner in range(4):
        img, (r0, c0, r1, c1) = _corner_image(S, P, corner, 1000 + corner)
        (e,) = explain(p, img)
        assert e.probability > 0.5 and e.target_layer == "backbone.layer3" and e.warning is None
        pr, pc = _peak(e.heatmap)
        top, left = corner in (0, 1), corner in (0, 2)
        assert (pr < S // 2) == top and (pc < S // 2) == left, f"corner {corner}: peak at {(pr, pc)}"
        inside = e.heatmap[r0:r1, c0:c1].mean()
        outside = (e.heatmap.sum() - e.heatmap[r0:r1, c0:c1].sum()) / (S * S - P * P)
        assert inside > 2 * outside, (corner, inside, outside)
