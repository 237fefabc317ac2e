"""FusionClassifier: shapes per task, metadata actually used, missing metadata, registry, Grad-CAM on the image branch."""

from __future__ import annotations

import pytest
import torch

from medlens.models import create_model, list_models
from medlens.models.fusion import FusionClassifier, MetadataBound

ARCH = {"type": "fusion", "backbone": "test_resnet", "in_chans": 3, "image_size": 32, "meta_dim": 6, "meta_hidden": [16, 8], "meta_dropout": 0.1}


def make(num_outputs: int = 1, **kw) -> FusionClassifier:
    torch.manual_seed(0)
    return create_model({**ARCH, "num_outputs": num_outputs, **kw}).eval()


@pytest.mark.parametrize("num_outputs", [1, 3, 14], ids=["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("cards", [None, [3, 4]], ids=["onehot", "embedding"])
def test_shapes_and_training_step(num_outputs, cards):
    m = make(num_outputs, meta_cardinalities=cards).train()
    x = torch.randn(4, 3, 32, 32)
    meta = torch.randn(4, 6)
    if cards:
        meta[:, 4] = torch.tensor([0, 1, 2, 2.0])
        meta[:, 5] = torch.tensor([3, 0, 1, 2.0])
    out = m(x, meta)
    assert out.shape == (4, num_outputs)
    out.sum().backward()
    assert m.meta_mlp[0].weight.grad.abs().sum() > 0  # the metadata branch is trained
    assert next(m.backbone.parameters()).grad.abs().sum() > 0  # and so is the image branch


def test_registered_and_listed():
    assert "fusion" in list_models()
    assert isinstance(make(), FusionClassifier)


def test_metadata_changes_the_output():
    m = make()
    x = torch.randn(2, 3, 32, 32)
    a = m(x, torch.zeros(2, 6))
    b = m(x, torch.full((2, 6), 3.0))
    assert not torch.allclose(a, b)


def test_forward_features_is_the_image_feature_map():
    m = make()
    x = torch.randn(2, 3, 32, 32)
    f = m.forward_features(x)
    assert f.ndim == 4 and f.shape[1] == m.num_features  # (B, C, h, w): what Grad-CAM hooks
    torch.testing.assert_close(m.forward_head(f, torch.ones(2, 6)), m(x, torch.ones(2, 6)))


def test_no_metadata_means_every_field_missing():
    missing = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    m = make(meta_missing=missing)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(m(x), m(x, torch.tensor([missing] * 3)))


def test_wrong_metadata_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"metadata must have shape \(batch, 6\)"):
        make()(torch.randn(1, 3, 32, 32), torch.zeros(1, 5))


def test_bad_architecture_is_refused():
    with pytest.raises(ValueError, match="architecture.meta_missing: 2 values, but meta_dim is"):
        make(meta_missing=[0.0, 1.0])
    with pytest.raises(ValueError, match="architecture.meta_dim: 0 is outside 1"):
        make(meta_dim=0)


def test_state_dict_round_trip_is_exact():
    a = make(3, meta_cardinalities=[2, 5])
    b = create_model({**ARCH, "num_outputs": 3, "meta_cardinalities": [2, 5]}).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x, meta = torch.randn(2, 3, 32, 32), torch.tensor([[0.1, 0.0, 0.5, 1.0, 1.0, 4.0]] * 2)
    torch.testing.assert_close(a(x, meta), b(x, meta), rtol=0, atol=0)


def test_gradcam_targets_the_image_branch():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = make(2)
    meta = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    bound = MetadataBound(m, meta)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(bound(x), m(x, meta))
    layer = bound.backbone.layer4
    with GradCAM(model=bound, target_layers=[layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    assert heat.shape == (1, 32, 32)
    assert torch.isfinite(torch.from_numpy(heat)).all()
