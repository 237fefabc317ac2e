"""model.pretrained: FILE takes third-party checkpoints: nested dicts, prefixes, a match report in the manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402

from medlens.models import PretrainedWeightsError  # noqa: E402
from medlens.models.classifier import ImageClassifier  # noqa: E402


@pytest.fixture(scope="module")
def resnet() -> dict[str, torch.Tensor]:
    """A resnet18 state dict with recognisable (random, seeded) values and timm's ImageNet classifier."""
    torch.manual_seed(7)
    return {k: v.clone() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}


def _assert_loaded(m: ImageClassifier, sd: dict[str, torch.Tensor], grey: bool = False) -> None:
    got = m.backbone.state_dict()
    for k, v in got.items():
        want = sd[k].sum(dim=1, keepdim=True) if grey and k == "conv1.weight" else sd[k]
        assert torch.equal(v, want), k


def test_a_dino_teacher_with_backbone_prefix_loads_and_reports(tmp_path: Path, resnet, caplog) -> None:
    # a DINO checkpoint: teacher and student, each "backbone." + resnet and a projection head; weights-only torch file
    teacher = {f"backbone.{k}": v for k, v in resnet.items() if not k.startswith("fc.")}
    teacher["head.mlp.0.weight"] = torch.zeros(8, 512)
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    path = tmp_path / "dino.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 100}, path)
    with caplog.at_level(logging.INFO, logger="medlens.models"):
        m = ImageClassifier("resnet18", num_outputs=1, in_chans=1, pretrained=str(path), small_input=False)
    _assert_loaded(m, resnet, grey=True)  # the teacher, not the student; the RGB stem summed for grey input
    match = m.pretrained_info["match"]
    n = len(m.backbone.state_dict())
    assert match["matched"] == match["backbone_tensors"] == n and match["missing"] == 0 and match["unexpected"] == 1
    assert match["nested"] == ["teacher"] and match["prefixes_stripped"] == ["backbone."]
    assert any(f"matched {n} of {n} backbone tensors (100 %)" in r.getMessage() and "'teacher'" in r.getMessage()
               for r in caplog.records)


def test_nested_state_dict_and_stacked_prefixes_in_safetensors_and_torch(tmp_path: Path, resnet) -> None:
    # Lightning-style: {"state_dict": {"model.backbone.<name>"}}; a DDP export in safetensors: "module.encoder.<name>"
    lit = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in resnet.items()}, "epoch": 3}, lit)
    m = ImageClassifier("resnet18", num_outputs=2, pretrained=str(lit), small_input=False)
    _assert_loaded(m, resnet)
    assert m.pretrained_info["match"]["nested"] == ["state_dict"]
    assert m.pretrained_info["match"]["prefixes_stripped"] == ["model.", "backbone."]
    st = tmp_path / "ddp.safetensors"
    save_file({f"module.encoder.{k}": v.contiguous() for k, v in resnet.items()}, str(st))
    m = ImageClassifier("resnet18", num_outputs=2, pretrained=str(st), small_input=False)
    _assert_loaded(m, resnet)
    assert m.pretrained_info["match"]["unexpected"] == 2  # fc.weight, fc.bias: the ImageNet classifier is not loaded


def test_partial_matches_load_with_the_report_and_under_half_is_refused(tmp_path: Path, resnet) -> None:
    keys = [k for k in resnet if not k.startswith("fc.")]
    most = {k: resnet[k] for k in keys if not k.startswith("layer4.")}  # layer4 absent: about 80 % of the tensors
    most["layer3.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)  # and one of the wrong shape
    path = tmp_path / "most.safetensors"
    save_file({k: v.contiguous() for k, v in most.items()}, str(path))
    m = ImageClassifier("resnet18", pretrained=str(path), small_input=False)
    match = m.pretrained_info["match"]
    assert match["missing"] == sum(k.startswith("layer4.") for k in keys) + 1 and match["shape_mismatches"] == 1
    assert match["matched"] == match["backbone_tensors"] - match["missing"]
    assert torch.equal(m.backbone.layer1[0].conv1.weight, resnet["layer1.0.conv1.weight"])
    few = tmp_path / "few.safetensors"
    save_file({k: resnet[k].contiguous() for k in keys if k.startswith(("conv1.", "bn1.", "layer1."))}, str(few))
    with pytest.raises(PretrainedWeightsError, match=r"under 50 % of its tensors\): matched \d+ of \d+ backbone tensors .* missing") as ei:
        ImageClassifier("resnet18", pretrained=str(few), small_input=False)
    assert "\n" not in str(ei.value) and str(few) in str(ei.value)


def test_code_carrying_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "cfg": Path("x")}, path)  # a pickled object
    with pytest.raises(PretrainedWeightsError, match="not a readable weights file"):
        ImageClassifier("resnet18", pretrained=str(path), small_input=False)


def test_training_stores_the_match_report_in_the_manifest(tmp_path: Path) -> None:
    from medlens.bundle import read_manifest
    from medlens.config import config_from_dict
    from medlens.training import train
    from tests.conftest import tiny_config

    torch.manual_seed(3)
    sd = timm.create_model("resnet10t", pretrained=False).state_dict()
    path = tmp_path / "gastronet_like.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in sd.items()}}, path)
    raw = tiny_config(tmp_path, {"kind": "synthetic", "num_samples": 40, "image_size": 16, "channels": 1},
                      model={"backbone": "resnet10t", "pretrained": str(path)}, trainer={"calibrate": False})
    res = train(config_from_dict(raw))
    match = read_manifest(res.bundle_dir).architecture["pretrained_weights"]["match"]
    assert match["nested"] == ["teacher"] and match["prefixes_stripped"] == ["module.", "backbone."]
    assert match["matched"] == match["backbone_tensors"] > 50 and match["missing"] == 0
