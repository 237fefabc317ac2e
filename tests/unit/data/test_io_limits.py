"""Bounded decoders: the size an image declares is checked before its pixels are decoded (PNG, JPEG, TIFF and
DICOM, compressed or not), tiny and strip-shaped images are refused, float pixels must be finite, and a small
RLE-compressed DICOM declaring a huge image costs no memory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import medlens
from medlens.data import io as mio
from medlens.data.io import ImageReadError, apply_window, check_dimensions, load_image, load_image_bytes

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: E402


# ------------------------------------------------------------------------------------------- builders
def save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR declaring ``width x height`` and no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def rle_segment(row_values: list[int], width: int) -> bytes:
    """One DICOM RLE (PackBits) segment of rows that are each one repeated byte value, row by row."""
    out = bytearray()
    for v in row_values:
        full, rest = divmod(width, 128)
        out += bytes([0x81, v]) * full  # a replicate run: 257 - 0x81 = 128 copies of v
        if rest > 1:
            out += bytes([257 - rest, v])
        elif rest == 1:
            out += bytes([0, v])  # a literal run of one byte
    if len(out) % 2:
        out += b"\0"  # segments are padded to an even length
    return bytes(out)


def rle_frame(segment: bytes) -> bytes:
    """An RLE frame of one segment (8-bit grey): a 64-byte header of the segment count and offsets."""
    return struct.pack("<16I", 1, 64, *([0] * 14)) + segment


def dicom_file(path: Path, rows: int, cols: int, frames: list[bytes] | np.ndarray, *, rle: bool, **tags) -> Path:
    """An 8-bit MONOCHROME2 DICOM: RLE frames (encapsulated) or a native (frames, rows, cols) uint8 array."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless if rle else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    n = len(frames)
    if n > 1:
        ds.NumberOfFrames = n
    for k, v in tags.items():
        setattr(ds, k, v)
    if rle:
        ds.PixelData = encapsulate(list(frames))
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


# ----------------------------------------------------------------------------------------- dimensions
def test_check_dimensions_limits_and_messages() -> None:
    check_dimensions(8, 400, "ok.png")  # 50:1 is allowed
    with pytest.raises(ImageReadError, match=r"^a\.png: image is 1x1 pixels, smaller than the minimum side of 8 px$"):
        check_dimensions(1, 1, "a.png")
    with pytest.raises(ImageReadError, match=r"^b\.png: image is 1x200000 pixels, smaller than the minimum side"):
        check_dimensions(1, 200000, "b.png")
    with pytest.raises(ImageReadError, match=r"^c\.png: image is 8x401 pixels, an aspect ratio of 50:1, over the limit of 50:1$"):
        check_dimensions(8, 401, "c.png")
    with pytest.raises(ImageReadError, match=r"^d\.png: image is 9000x9000 pixels, over the limit of 67108864$"):
        check_dimensions(9000, 9000, "d.png")
    check_dimensions(9000, 9000, "d.png", max_pixels=10**8)  # each limit is a parameter
    check_dimensions(2, 2, "e.png", min_side=1)
    check_dimensions(10, 1000, "f.png", max_aspect=100)
    assert (mio.MAX_PIXELS, mio.MIN_SIDE, mio.MAX_ASPECT) == (1 << 26, 8, 50.0)


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 1), "1x1 pixels, smaller than the minimum side of 8 px"),
    ((200000, 1), "1x200000 pixels, smaller than the minimum side"),  # (H, W): a one-pixel-wide strip
    ((10, 1000), "1000x10 pixels, an aspect ratio of 100:1, over the limit of 50:1"),
])
def test_tiny_and_strip_images_are_refused(tmp_path: Path, shape: tuple[int, int], message: str) -> None:
    p = save(tmp_path / "bad.png", np.zeros(shape, np.uint8))
    with pytest.raises(ImageReadError, match="bad.png: image is " + message) as e:
        load_image(p)
    assert "\n" not in str(e.value)
    with pytest.raises(ImageReadError, match="upload: image is " + message):
        load_image_bytes(p.read_bytes(), "upload")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff", "bmp"])
def test_size_is_checked_from_the_header_before_decoding(tmp_path: Path, fmt: str, monkeypatch) -> None:
    p = save(tmp_path / f"big.{fmt}", np.zeros((64, 80), np.uint8))
    assert load_image(p).shape == (64, 80)

    def no_decoding(self, *a, **kw):
        raise AssertionError("pixel data decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageReadError, match=rf"big\.{fmt}: image is 80x64 pixels, over the limit of 5000$"):
        load_image(p, max_pixels=5000)
    with pytest.raises(ImageReadError, match="minimum side of 100 px"):
        load_image(p, min_side=100)
    with pytest.raises(ImageReadError, match="aspect ratio"):
        load_image(p, max_aspect=1.1)


def test_png_declaring_a_huge_image_is_refused_without_pixel_data(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(9000, 9000))  # 81 Mpx: under Pillow's own limit, over ours
    with pytest.raises(ImageReadError, match=r"bomb\.png: image is 9000x9000 pixels, over the limit of 67108864"):
        load_image(p)


# ---------------------------------------------------------------------------------------- finite values
@pytest.mark.parametrize("nan", ["all", "one", "inf"])
def test_float_tiff_with_nan_or_inf_is_refused(tmp_path: Path, nan: str) -> None:
    a = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    save(tmp_path / "ok.tif", a)
    assert Image.open(tmp_path / "ok.tif").mode == "F"
    assert load_image(tmp_path / "ok.tif").max() == 255
    if nan == "all":
        a[:] = np.nan
    elif nan == "one":
        a[3, 4] = np.nan
    else:
        a[0, 0] = np.inf
    p = save(tmp_path / "nan.tif", a)
    n = 256 if nan == "all" else 1
    with pytest.raises(ImageReadError, match=rf"^{p}: {n} of 256 pixel values are NaN or infinite$"):
        load_image(p)


# ----------------------------------------------------------------------------------------------- DICOM
def test_hand_built_rle_dicom_decodes(tmp_path: Path) -> None:
    # the builder used for the bomb below writes real RLE: a small one decodes to the pixels it encodes
    rows = [16 * r for r in range(16)]
    p = dicom_file(tmp_path / "rle.dcm", 16, 24, [rle_frame(rle_segment(rows, 24))], rle=True)
    assert pydicom.dcmread(p).file_meta.TransferSyntaxUID == RLELossless
    expected = np.repeat(np.array(rows, np.uint8)[:, None], 24, axis=1)
    np.testing.assert_array_equal(pydicom.dcmread(p).pixel_array, expected)
    np.testing.assert_array_equal(load_image(p), mio.to_uint8(expected.astype(np.float32)))  # min..max scaled


@pytest.mark.parametrize(("rows", "cols", "message"), [
    (4, 4, "image is 4x4 pixels, smaller than the minimum side of 8 px"),
    (8, 1000, "image is 1000x8 pixels, an aspect ratio of 125:1"),
    (9000, 9000, "image is 9000x9000 pixels, over the limit of 67108864"),
])
def test_dicom_size_is_checked_from_the_header(tmp_path: Path, rows: int, cols: int, message: str) -> None:
    # the RLE pixel data is one tiny frame whatever the header says: only the header can be refused
    p = dicom_file(tmp_path / "x.dcm", rows, cols, [rle_frame(rle_segment([0] * 8, 8))], rle=True)
    with pytest.raises(ImageReadError, match=rf"^{p}: {message}"):
        load_image(p)
    with pytest.raises(ImageReadError, match=rf"^upload\.dcm: {message}"):
        load_image_bytes(p.read_bytes(), "upload.dcm")


def test_dicom_samples_per_pixel_is_bounded(tmp_path: Path) -> None:
    p = dicom_file(tmp_path / "s.dcm", 8, 8, np.zeros((1, 8, 8), np.uint8), rle=False, SamplesPerPixel=200)
    with pytest.raises(ImageReadError, match=r"s\.dcm: DICOM SamplesPerPixel is 200"):
        load_image(p)


def test_multiframe_dicom_decodes_the_middle_frame_only(tmp_path: Path) -> None:
    frames = np.zeros((5, 8, 8), np.uint8)
    for k in range(5):
        frames[k, 4:] = 40 * k  # bottom half: 0, 40, 80, 120, 160
    p = dicom_file(tmp_path / "mf.dcm", 8, 8, frames, rle=False, WindowCenter=127.5, WindowWidth=256)
    img = load_image(p)
    np.testing.assert_array_equal(img, apply_window(frames[2].astype(float), 127.5, 256))


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from medlens.data.io import ImageReadError, load_image, load_image_bytes
    load_image(sys.argv[2])  # a small valid RLE DICOM: pydicom's decoders imported before the baseline
    data = open(sys.argv[1], "rb").read() if sys.argv[3] == "bytes" else None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    try:
        img = load_image_bytes(data, "bomb.dcm") if data is not None else load_image(sys.argv[1])
        outcome = f"decoded {img.shape} {int(img.max())}"
    except ImageReadError as e:
        outcome = f"ImageReadError: {e}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    print(json.dumps({"outcome": outcome, "delta_mb": (peak - base) / 2**20}))
""")


def _peak(bomb: Path, small: Path, how: str) -> dict:
    env = {"PYTHONPATH": str(Path(medlens.__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(bomb), str(small), how], capture_output=True,
                         text=True, timeout=120, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is Unix-only")
@pytest.mark.parametrize("how", ["path", "bytes"])
def test_rle_dicom_bomb_is_refused_before_decoding(tmp_path: Path, how: str) -> None:
    # 2.3 MB on disk declaring 12000 x 12000 (144 MB of 8-bit pixels, ~0.7 GB once scaled as float32)
    bomb = dicom_file(tmp_path / "bomb.dcm", 12000, 12000, [rle_frame(rle_segment([0] * 12000, 12000))], rle=True)
    assert bomb.stat().st_size < 3 * 2**20
    small = dicom_file(tmp_path / "small.dcm", 16, 16, [rle_frame(rle_segment(list(range(16)), 16))], rle=True)
    r = _peak(bomb, small, how)
    assert r["outcome"].startswith("ImageReadError: ") and "12000x12000 pixels, over the limit" in r["outcome"]
    assert r["delta_mb"] < 300, r


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is Unix-only")
def test_multiframe_rle_dicom_decodes_one_frame_not_all(tmp_path: Path) -> None:
    # 600 frames of 512 x 512: 157 MB if every frame were decoded; the middle one is 0.26 MB
    n, side = 600, 512
    frames = [rle_frame(rle_segment([0] * (side // 2) + [k // 3] * (side // 2), side)) for k in range(n)]
    p = dicom_file(tmp_path / "mf.dcm", side, side, frames, rle=True, WindowCenter=127.5, WindowWidth=256)
    small = dicom_file(tmp_path / "small.dcm", 16, 16, [rle_frame(rle_segment(list(range(16)), 16))], rle=True)
    r = _peak(p, small, "path")
    assert r["outcome"] == f"decoded ({side}, {side}) {int(apply_window(np.array([100.0]), 127.5, 256)[0])}", r
    assert r["delta_mb"] < 60, r
