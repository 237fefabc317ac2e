"""DICOM decoding: rescale slope/intercept, VOI windowing and LUT, MONOCHROME1, colour, magic-less files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from medlens.data.io import ImageReadError, apply_window, load_image, load_image_bytes  # noqa: E402


def make_dicom(path: Path, pixels: np.ndarray, *, preamble: bool = True, photometric: str = "MONOCHROME2", **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=preamble, implicit_vr=False, little_endian=True)
    return path


def ramp(lo: int, hi: int, dtype=np.int16) -> np.ndarray:
    return np.linspace(lo, hi, 64, dtype=np.float64).round().astype(dtype).reshape(8, 8)


def test_rescale_and_window_give_the_window_not_the_data_range(tmp_path: Path) -> None:
    stored = ramp(0, 2000, np.uint16)  # raw values; HU = stored - 1024
    p = make_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    img = load_image(p)
    assert img.dtype == np.uint8 and img.shape == (8, 8)
    hu = stored.astype(np.float64) - 1024
    np.testing.assert_array_equal(img, apply_window(hu, 40, 400))
    assert img[hu <= 40 - 200].max() == 0 and img[hu > 40 + 200].min() == 255  # saturated outside the window
    inside = (hu > -160) & (hu < 240)
    linear = ((hu - 39.5) / 399 + 0.5) * 255  # DICOM PS3.3 C.11.2.1.2.1, written out
    assert np.abs(img[inside] - linear[inside]).max() <= 1


def test_rescale_slope_is_applied(tmp_path: Path) -> None:
    stored = ramp(0, 100, np.uint16)
    # slope 10: values 0..1000; a window 0..1000 maps them linearly onto 0..255
    p = make_dicom(tmp_path / "s.dcm", stored, RescaleSlope=10, RescaleIntercept=0, WindowCenter=500, WindowWidth=1001)
    img = load_image(p)
    assert img.flat[0] == 0 and img.flat[-1] == 255
    assert abs(int(img.flat[32]) - round(stored.flat[32] * 10 / 1000 * 255)) <= 2


def test_multivalued_window_uses_the_first(tmp_path: Path) -> None:
    stored = ramp(-1000, 1000)
    p = make_dicom(tmp_path / "m.dcm", stored, WindowCenter=[0, 500], WindowWidth=[200, 100])
    np.testing.assert_array_equal(load_image(p), apply_window(stored.astype(float), 0, 200))


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = ramp(0, 4095, np.uint16)
    m2 = load_image(make_dicom(tmp_path / "a.dcm", stored))
    m1 = load_image(make_dicom(tmp_path / "b.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m2.flat[0] == 0 and m2.flat[-1] == 255  # no window: the image's own range
    assert m1.flat[0] == 255  # in MONOCHROME1, low values are white


@pytest.mark.parametrize("as_words", [False, True])
def test_voi_lut_sequence(tmp_path: Path, as_words: bool) -> None:
    stored = ramp(0, 255, np.uint16)
    curve = (np.arange(256) ** 2 // 16).astype(np.uint16)  # a non-linear curve, 0..4064
    lut = Dataset()
    lut.add_new((0x0028, 0x3002), "US", [256, 0, 16])  # LUT Descriptor
    if as_words:
        lut.add_new((0x0028, 0x3006), "OW", curve.astype("<u2").tobytes())  # LUT Data as raw 16-bit words
    else:
        lut.add_new((0x0028, 0x3006), "US", [int(v) for v in curve])
    p = make_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[lut])
    img = load_image(p)
    expected = np.clip(np.floor(curve[stored].astype(float) * 255.0 / 4064 + 0.5), 0, 255)
    np.testing.assert_allclose(img, expected, atol=1)


def test_rgb_dicom(tmp_path: Path) -> None:
    px = np.zeros((8, 8, 3), np.uint8)
    px[..., 0] = 200
    img = load_image(make_dicom(tmp_path / "rgb.dcm", px, photometric="RGB"))
    assert img.shape == (8, 8, 3) and img[0, 0].tolist() == [200, 0, 0]


def test_magic_and_suffix_detection(tmp_path: Path) -> None:
    stored = ramp(0, 1000, np.uint16)
    with_magic = make_dicom(tmp_path / "no_suffix", stored)  # no .dcm: found by the DICM magic
    assert load_image(with_magic).shape == (8, 8)
    assert load_image_bytes(with_magic.read_bytes()).shape == (8, 8)
    raw = make_dicom(tmp_path / "raw.dcm", stored, preamble=False)  # no preamble/magic: found by the suffix
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(load_image(raw), load_image(with_magic))


def test_corrupt_dicom_is_a_clear_error(tmp_path: Path) -> None:
    good = make_dicom(tmp_path / "g.dcm", ramp(0, 1000, np.uint16)).read_bytes()
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(good[: len(good) - 60])  # pixel data cut short
    with pytest.raises(ImageReadError, match=r"bad\.dcm: unreadable DICOM"):
        load_image(bad)


def test_apply_window_functions() -> None:
    x = np.array([-100.0, 0.0, 100.0])
    assert apply_window(x, 0, 200, "LINEAR_EXACT").tolist() == [0, 128, 255]
    s = apply_window(x, 0, 200, "SIGMOID")
    assert s[0] < 128 < s[2] and s[1] == 128


def _lut_item(curve: np.ndarray, first: int) -> Dataset:
    lut = Dataset()
    lut.add_new((0x0028, 0x3002), "US", [len(curve), first, 16])  # LUT Descriptor: entries, first value, bits
    lut.add_new((0x0028, 0x3006), "US", [int(v) for v in curve])  # LUT Data
    return lut


def test_voi_lut_is_preferred_over_the_window_as_pydicom_does(tmp_path: Path) -> None:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stored = ramp(0, 300, np.uint16)  # values below the LUT's first entry (10) and past its last (265)
    curve = (np.arange(256) ** 2 // 16).astype(np.uint16)
    p = make_dicom(tmp_path / "both.dcm", stored, VOILUTSequence=[_lut_item(curve, 10)], WindowCenter=100, WindowWidth=50)
    ds = pydicom.dcmread(p)
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True).astype(np.float64)
    lo, hi = float(curve.min()), float(curve.max())  # scaled over the LUT's own output range, as medlens does
    expected = np.clip(np.floor((voi - lo) * 255.0 / (hi - lo) + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_image(p), expected)
    assert load_image(p).min() == 0 and load_image(p).max() == 255
    # the switch: the window instead, as apply_voi_lut(prefer_lut=False) chooses
    np.testing.assert_array_equal(load_image(p, prefer_voi_lut=False), apply_window(stored.astype(float), 100, 50))
    np.testing.assert_array_equal(load_image_bytes(p.read_bytes(), "b.dcm", prefer_voi_lut=False),
                                  apply_window(stored.astype(float), 100, 50))


def test_malformed_voi_lut_falls_back_to_the_window(tmp_path: Path, caplog) -> None:
    stored = ramp(0, 300, np.uint16)
    lut = Dataset()
    lut.add_new((0x0028, 0x3002), "US", [256, 0, 16])
    lut.add_new((0x0028, 0x3006), "OW", b"\x00\x01")  # 2 bytes: far fewer entries than the 256 promised
    p = make_dicom(tmp_path / "bad_lut.dcm", stored, VOILUTSequence=[lut], WindowCenter=100, WindowWidth=50)
    np.testing.assert_array_equal(load_image(p), apply_window(stored.astype(float), 100, 50))
    assert "bad_lut.dcm: VOI LUT not applied (the VOI LUT has 2 entries, its descriptor says 256); using the window" in caplog.text


def test_ybr_full_dicom_is_converted_to_rgb_once(tmp_path: Path) -> None:
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 50
    p = make_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), photometric="YBR_FULL")
    assert np.abs(load_image(p).astype(int) - rgb).max() <= 2
