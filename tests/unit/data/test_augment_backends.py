"""data.augment_backend: the light/strong presets in albumentations and in torchvision, both within the documented
ranges, reproducible from a seed, and chosen by the config for the training split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.config import ConfigError, config_from_dict
from medlens.data.dataset import EpochIndex
from medlens.data.io import load_image
from medlens.data.transforms import (
    AUGMENT_BACKENDS,
    SeededAugment,
    SeededTorchvision,
    build_augment,
    geometry,
    resolve_preprocessing,
)

SEEDS = range(40)


@pytest.fixture(scope="module")
def xray(nih_dir) -> np.ndarray:
    """A real NIH chest X-ray at 32 px, uint8 (H, W, 1)."""
    path = sorted((nih_dir / "train" / "1_abnormal").glob("*.png"))[0]
    return geometry(load_image(path), resolve_preprocessing(32, 1))


@pytest.mark.parametrize("backend", AUGMENT_BACKENDS)
@pytest.mark.parametrize("preset", ["light", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_both_backends_keep_shape_dtype_and_range_and_are_seeded(xray, backend, preset, channels) -> None:
    img = np.repeat(xray, channels, axis=2) if channels == 3 else xray
    aug = build_augment(preset, channels, backend=backend)
    before = torch.random.get_rng_state()
    outs = [aug(image=img, seed=s)["image"] for s in SEEDS]
    assert torch.equal(torch.random.get_rng_state(), before)  # a seeded draw leaves torch's global stream alone
    for out in outs:
        assert out.dtype == np.uint8 and out.shape == img.shape  # uint8 0-255 at the model's size
    assert sum(not np.array_equal(o, img) for o in outs) >= len(SEEDS) // 3  # the preset acts
    assert np.array_equal(aug(image=img, seed=3)["image"], outs[3])  # reproducible from the seed


@pytest.mark.parametrize("backend", AUGMENT_BACKENDS)
def test_light_keeps_a_mid_grey_pixel_within_25_percent(backend) -> None:
    grey = np.full((32, 32, 1), 128, np.uint8)
    aug = build_augment("light", 1, backend=backend)
    centre = [int(aug(image=grey, seed=s)["image"][16, 16, 0]) for s in SEEDS]
    assert all(96 <= v <= 160 for v in centre), centre  # the documented range
    assert len(set(centre)) > 3  # brightness/contrast acted


def test_the_backends_draw_differently_and_unknown_ones_are_refused(xray) -> None:
    a, t = (build_augment("strong", 1, backend=b) for b in AUGMENT_BACKENDS)
    assert sum(not np.array_equal(a(image=xray, seed=s)["image"], t(image=xray, seed=s)["image"]) for s in SEEDS) > 30
    assert isinstance(a, SeededAugment) and isinstance(t, SeededTorchvision)
    with pytest.raises(ValueError, match="data.augment_backend: unknown backend 'kornia'; valid: albumentations, torchvision"):
        build_augment("light", 1, backend="kornia")


def test_the_config_picks_the_training_split_backend(tmp_path) -> None:
    from medlens.training import build_datasets, prepare_data

    def train_image(backend: str) -> np.ndarray:
        cfg = config_from_dict({"data": {"kind": "synthetic", "num_samples": 30, "image_size": 16, "channels": 1,
                                         "augment": "strong", "augment_backend": backend, "cache_images": False}})
        table, splits = prepare_data(cfg)
        _, sets, _ = build_datasets(cfg, table, splits)
        return np.stack([sets["train"][EpochIndex(0, s)]["image"] for s in range(8)])

    a, t = train_image("albumentations"), train_image("torchvision")
    assert a.shape == t.shape and not np.allclose(a, t)
    with pytest.raises(ConfigError, match="data.augment_backend: torchvision acts only with data.augment: light or strong"):
        config_from_dict({"data": {"kind": "synthetic", "augment": "none", "augment_backend": "torchvision"}})
