"""Image decoding robustness: bit depths, colour modes, EXIF orientation, and bad files (skip or error)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.dataset import ImageDataset
from medlens.data.io import ImageReadError, load_image, load_image_bytes
from medlens.data.labels import LabelSpace
from medlens.data.samples import SampleTable
from medlens.data.transforms import make_transform, resolve_preprocessing


def grad(h: int = 8, w: int = 10) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 4).astype(np.uint8)


def test_8bit_grey_is_unchanged(tmp_path: Path) -> None:
    a = grad()
    Image.fromarray(a).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), a)


def test_16bit_grey_is_scaled_to_its_range(tmp_path: Path) -> None:
    a = np.linspace(1000, 5000, 80).reshape(8, 10).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = load_image(tmp_path / "g16.png")
    assert img.dtype == np.uint8 and img.shape == (8, 10)
    assert img.min() == 0 and img.max() == 255
    assert np.all(np.diff(img.ravel().astype(int)) >= 0)  # order preserved


def test_rgb_rgba_la_palette_and_1bit(tmp_path: Path) -> None:
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)
    rgba = np.dstack([rgb, np.full((8, 10), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, shape (H, W, 3)
    Image.fromarray(grad(8, 10)).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png"), grad(8, 10))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (8, 10, 3) and abs(int(out[0, 0, 1]) - 200) <= 2
    Image.fromarray((grad(8, 10) > 40).astype(np.uint8) * 255).convert("1").save(tmp_path / "b.png")
    b = load_image(tmp_path / "b.png")
    assert b.shape == (8, 10) and set(np.unique(b).tolist()) <= {0, 255}


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = 255  # white band on the left of the stored pixels
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)  # displayed upright: width and height swapped
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now at the top


def test_nih_rgba_file_decodes(nih_dir: Path) -> None:
    # the real set stores grey content as RGB/RGBA PNGs; every one must decode to 64x64x3
    files = sorted(nih_dir.glob("*/*/*.png"))[:200]
    modes = {Image.open(f).mode for f in files}
    for f in files:
        assert load_image(f).shape == (64, 64, 3)
    assert modes <= {"RGB", "RGBA", "L", "P"}


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_corrupt_bytes_are_a_clear_error(data: bytes) -> None:
    with pytest.raises(ImageReadError, match="upload.png"):
        load_image_bytes(data, "upload.png")


def test_missing_file_is_an_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="image file not found"):
        load_image(tmp_path / "nope.png")


def _table_with_a_bad_file(tmp_path: Path) -> SampleTable:
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(p)
        paths.append(str(p))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    Path(paths[2]).write_bytes(buf.getvalue()[:20])  # truncated
    t = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    return SampleTable(LabelSpace(("a", "b"), "binary"), [f"{i}" for i in range(4)], paths, t)


@pytest.mark.parametrize("cache", [True, False])
def test_on_bad_image_skip_lists_the_file_and_error_raises(tmp_path: Path, cache: bool, caplog) -> None:
    table = _table_with_a_bad_file(tmp_path)
    pp = resolve_preprocessing(16, 1)
    tf = make_transform(pp)
    with pytest.raises(ImageReadError, match=r"2\.png"):
        ds = ImageDataset(table, tf, pp, cache=cache, on_bad_image="error")
        [ds[i] for i in range(len(ds))]
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        ds = ImageDataset(table, tf, pp, cache=cache, on_bad_image="skip")
        items = [ds[i] for i in range(len(ds))]
    assert items[2] is None and all(items[i] is not None for i in (0, 1, 3))
    assert "2.png" in caplog.text
    if cache:
        assert ds.skipped == [table.images[2]]
