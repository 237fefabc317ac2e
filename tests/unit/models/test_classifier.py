"""ImageClassifier: every backbone family a user is likely to name builds, forwards and trains at small sizes."""

from __future__ import annotations

import pytest
import torch

from medlens.models.classifier import ImageClassifier, stem_reduction

FAMILIES = ["resnet18", "mobilenetv3_small_100", "efficientnet_b0", "convnext_atto", "densenet121"]


@pytest.mark.parametrize("backbone", FAMILIES)
@pytest.mark.parametrize("size,small_input", [(28, "auto"), (64, False)])
def test_family_forwards_and_backprops(backbone: str, size: int, small_input) -> None:
    torch.manual_seed(0)
    m = ImageClassifier(backbone, num_outputs=3, in_chans=1, image_size=size, small_input=small_input)
    x = torch.randn(2, 1, size, size)
    feats = m.forward_features(x)
    assert feats.ndim == 4 and feats.shape[-1] >= 1, "a feature map for Grad-CAM"
    out = m(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert m.head.weight.grad is not None and torch.isfinite(m.head.weight.grad).all()


def test_small_input_keeps_a_spatial_map_at_28px() -> None:
    """The stock ResNet stem turns 28 px into a 1x1 map; the adapted stem keeps 4x4 (MedMNIST-style)."""
    stock = ImageClassifier("resnet18", num_outputs=1, in_chans=1, image_size=28, small_input=False)
    small = ImageClassifier("resnet18", num_outputs=1, in_chans=1, image_size=28, small_input="auto")
    stock.eval()
    small.eval()
    x = torch.randn(1, 1, 28, 28)
    assert stock.forward_features(x).shape[-1] == 1
    assert small.forward_features(x).shape[-1] == 4
    assert stem_reduction(28, "auto") == 4 and stem_reduction(64, "auto") == 2 and stem_reduction(224, "auto") == 1
