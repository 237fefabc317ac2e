"""JPEG sources at least twice the model's size decode at reduced scale (libjpeg DCT scaling, Pillow draft);
everything else decodes exactly as before."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from medlens.data.io import jpeg_draft_scale, load_image, load_image_bytes
from medlens.data.transforms import geometry, resolve_preprocessing


def _radiograph(size: int, seed: int = 0) -> np.ndarray:
    base = np.random.default_rng(seed).integers(0, 255, (12, 12)).astype(np.uint8)
    return cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize(("w", "h", "target", "scale"), [(1024, 1024, 224, 4), (2000, 1500, 224, 4), (1800, 1800, 224, 8),
                                                        (448, 448, 224, 2), (447, 1024, 224, 1), (300, 300, 224, 1),
                                                        (1024, 1024, None, 1)])
def test_the_scale_keeps_both_sides_at_least_the_target(w: int, h: int, target: int | None, scale: int) -> None:
    assert jpeg_draft_scale(w, h, target) == scale
    if target:
        assert -(-w // scale) >= target and -(-h // scale) >= target


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_large_jpeg_decodes_smaller_and_ends_up_nearly_the_same(tmp_path: Path, mode: str) -> None:
    img = _radiograph(1024)
    if mode == "RGB":
        img = np.stack([img, np.roll(img, 5, axis=0), 255 - img], axis=2)
    p = tmp_path / "big.jpg"
    Image.fromarray(img).save(p, quality=90)
    full, reduced = load_image(p), load_image(p, reduce_to=224)
    assert full.shape[:2] == (1024, 1024) and reduced.shape[:2] == (256, 256)  # 1/4 scale: still >= 224
    assert full.ndim == reduced.ndim and full.dtype == reduced.dtype == np.uint8
    pp = resolve_preprocessing(224, 3 if mode == "RGB" else 1)
    a, b = geometry(full, pp).astype(int), geometry(reduced, pp).astype(int)
    assert np.abs(a - b).mean() < 1.5  # grey levels: the model sees nearly the same image
    np.testing.assert_array_equal(load_image_bytes(p.read_bytes(), "big.jpg", reduce_to=224), reduced)


def test_small_jpegs_and_other_formats_decode_exactly_as_before(tmp_path: Path) -> None:
    small = tmp_path / "small.jpg"
    Image.fromarray(_radiograph(400)).save(small, quality=90)  # less than twice 224
    np.testing.assert_array_equal(load_image(small, reduce_to=224), load_image(small))
    png = tmp_path / "big.png"
    Image.fromarray(_radiograph(1024)).save(png)
    np.testing.assert_array_equal(load_image(png, reduce_to=224), load_image(png))


def test_exif_rotated_jpeg_is_reduced_and_rotated(tmp_path: Path) -> None:
    img = _radiograph(1024)[:, :600]  # 1024 rows x 600 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rot.jpg"
    Image.fromarray(img).save(p, quality=90, exif=exif)
    full, reduced = load_image(p), load_image(p, reduce_to=224)
    assert full.shape == (600, 1024) and reduced.shape == (300, 512)  # scale 2 (600 // 224 = 2), then rotated


def test_kermany_files_are_at_the_model_size_so_unchanged(shared_data: Path) -> None:
    root = shared_data / "kermany_chestxray_224"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    p = next((root / "train" / "NORMAL").glob("*.jpeg"))
    np.testing.assert_array_equal(load_image(p, reduce_to=224), load_image(p))
    assert load_image(p, reduce_to=64).shape[:2] == (112, 112)  # a 64 px model: half scale
