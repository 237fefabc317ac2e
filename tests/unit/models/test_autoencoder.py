"""Autoencoders for anomaly detection: shapes, the no-skip property, error maps and scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.models import create_model, list_models
from medlens.models.autoencoder import (
    ReversedAutoencoder,
    ScoreSpec,
    UNetAutoencoder,
    anomaly_scores,
    error_map,
    scores_from_error_maps,
    ssim_map,
)

AE_TYPES = ["unet_ae", "reversed_ae"]


@pytest.mark.parametrize("kind", AE_TYPES)
@pytest.mark.parametrize(("chans", "size", "depth"), [(1, 28, 3), (3, 30, 2), (1, 64, 4), (1, 17, 1)])
def test_reconstruction_has_the_input_shape(kind, chans, size, depth):
    m = create_model({"type": kind, "in_chans": chans, "image_size": size, "depth": depth, "width": 4, "latent_dim": 8}).eval()
    x = torch.randn(2, chans, size, size)
    assert m(x).shape == x.shape
    assert m.encode(x).shape == (2, 8)


def test_autoencoders_are_registered():
    assert {"unet_ae", "reversed_ae"} <= set(list_models())


@pytest.mark.parametrize("kind", AE_TYPES)
def test_wrong_input_size_is_a_clear_error(kind):
    m = create_model({"type": kind, "in_chans": 1, "image_size": 28, "depth": 2, "width": 4, "latent_dim": 8})
    with pytest.raises(ValueError, match=r"expected input \(N, 1, 28, 28\)"):
        m(torch.zeros(1, 1, 32, 32))


def test_too_deep_for_the_image_is_an_error():
    with pytest.raises(ValueError, match="too small for depth"):
        UNetAutoencoder(1, 8, depth=4)


def test_reversed_ae_is_decode_of_encode():
    torch.manual_seed(0)
    m = ReversedAutoencoder(1, 28, depth=2, width=4, latent_dim=6).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(m(x), m.decode(m.encode(x)), atol=1e-6)


class _FixedLatent(torch.nn.Module):
    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.z = z

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.z.expand(flat.shape[0], -1)


@pytest.mark.parametrize(("kind", "carries_detail"), [("reversed_ae", False), ("unet_ae", True)])
def test_with_the_latent_fixed_only_skip_connections_carry_input_detail(kind, carries_detail):
    """The reversed AE cannot copy its input: with the latent pinned, no gradient reaches the image at all;
    the U-Net's skip connection is a path around the bottleneck."""
    torch.manual_seed(0)
    m = create_model({"type": kind, "in_chans": 1, "image_size": 28, "depth": 3, "width": 4, "latent_dim": 6}).eval()
    m.bottleneck.encode = _FixedLatent(torch.randn(1, 6))
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    out = m(x)
    if out.requires_grad:
        out.pow(2).sum().backward()
    reached = x.grad is not None and float(x.grad.abs().sum()) > 0.0
    assert reached is carries_detail


def test_unet_skip_levels_default_is_the_deepest_level():
    assert UNetAutoencoder(1, 28, depth=3, width=4, latent_dim=8).skip_levels == [2]
    assert UNetAutoencoder(1, 28, depth=3, width=4, latent_dim=8, skip_levels=[]).skip_levels == []
    with pytest.raises(ValueError, match="skip_levels"):
        UNetAutoencoder(1, 28, depth=3, skip_levels=[3])


# ------------------------------------------------------------------------------------------ error maps
@pytest.mark.parametrize("kind", ["mse", "ssim"])
@pytest.mark.parametrize(("chans", "size"), [(1, 28), (3, 20), (1, 9)])
def test_error_map_has_the_input_size(kind, chans, size):
    spec = ScoreSpec(error_map=kind, mean=(0.5,) * chans, std=(0.5,) * chans)
    x = torch.randn(4, chans, size, size)
    maps = error_map(x, x + 0.1 * torch.randn_like(x), spec)
    assert maps.shape == (4, 1, size, size)
    assert torch.all(maps >= 0)


@pytest.mark.parametrize("kind", ["mse", "ssim"])
def test_perfect_reconstruction_has_zero_error_and_a_local_defect_is_localised(kind):
    spec = ScoreSpec(error_map=kind, mean=(0.5,), std=(0.5,))
    torch.manual_seed(0)
    x = torch.rand(1, 1, 28, 28) * 2 - 1
    assert float(error_map(x, x, spec).max()) == pytest.approx(0.0, abs=1e-5)
    recon = x.clone()
    recon[:, :, 20:24, 3:7] = -1.0 if kind == "mse" else torch.rand(1, 1, 4, 4) * 2 - 1
    m = error_map(x, recon, spec)[0, 0]
    peak = np.unravel_index(int(m.argmax()), m.shape)
    assert 17 <= peak[0] <= 26 and 0 <= peak[1] <= 9


def test_ssim_map_properties():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x), atol=1e-4)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(ssim_map(x, y), ssim_map(y, x), atol=1e-6)  # symmetric
    worse = (x + 0.5 * torch.randn_like(x)).clamp(0, 1)
    assert ssim_map(x, worse).mean() < ssim_map(x, y).mean() < 1.0


def test_ssim_is_computed_on_pixels_not_on_standardised_values():
    """Standardised grey images are centred on 0 where SSIM's luminance term breaks; the spec undoes it."""
    x01 = torch.rand(1, 1, 16, 16)
    r01 = (x01 + 0.05).clamp(0, 1)
    spec = ScoreSpec(error_map="ssim", mean=(0.5,), std=(0.5,))
    via_spec = error_map((x01 - 0.5) / 0.5, (r01 - 0.5) / 0.5, spec)
    direct = (1 - ssim_map(x01, r01)) / 2
    assert torch.allclose(via_spec, direct, atol=1e-5)


def test_scores_mean_and_percentile():
    maps = torch.arange(100.0).view(1, 1, 10, 10).repeat(2, 1, 1, 1)
    maps[1] *= 2
    assert scores_from_error_maps(maps, ScoreSpec(method="mean")).tolist() == [49.5, 99.0]
    p = scores_from_error_maps(maps, ScoreSpec(method="percentile", percentile=99.0))
    assert p.tolist() == pytest.approx([np.percentile(np.arange(100.0), 99), 2 * np.percentile(np.arange(100.0), 99)])


def test_score_spec_round_trips_through_json_and_rejects_unknown_names():
    spec = ScoreSpec(error_map="ssim", method="percentile", percentile=97.5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), ssim_window=11)
    assert ScoreSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="valid: mse, ssim"):
        ScoreSpec(error_map="l1")
    with pytest.raises(ValueError, match="valid: mean, percentile"):
        ScoreSpec(method="max")


def test_anomaly_scores_matches_error_map_of_the_reconstruction():
    m = UNetAutoencoder(1, 28, depth=2, width=4, latent_dim=8).eval()
    x = torch.randn(5, 1, 28, 28)
    s, maps = anomaly_scores(m, x)
    with torch.no_grad():
        expected = ((m(x) - x) ** 2).flatten(1).mean(1)
    assert torch.allclose(s, expected, atol=1e-6)
    assert maps.shape == (5, 1, 28, 28)
