"""Reading images from disk or bytes into uint8 arrays.

Every path goes through :func:`load_image`, so training, evaluation, prediction and serving decode images the
same way: PNG/JPEG/TIFF/BMP (8/16-bit grey, RGB, RGBA, palette, EXIF orientation) via Pillow, and DICOM
(``.dcm`` or the ``DICM`` magic) via pydicom with rescale, VOI LUT/windowing and MONOCHROME1 inversion.
The result is ``uint8`` of shape (H, W) for grey or (H, W, 3) for colour.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# Decompression-bomb guard for files: 2**28 pixels (~16k x 16k). The server sets a much lower limit.
MAX_PIXELS = 1 << 28


class ImageReadError(ValueError):
    """An image could not be read; the message names the file."""


def is_dicom_bytes(head: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 using its min/max (16-bit PNGs, float images)."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _from_pil(img, max_pixels: int) -> np.ndarray:
    from PIL import ImageOps

    w, h = img.size
    if w * h > max_pixels:
        raise ImageReadError(f"image is {w}x{h} pixels, over the limit of {max_pixels}")
    img = ImageOps.exif_transpose(img)  # respect camera orientation
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(img))
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode == "LA":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGB"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_dicom(source: str | Path | bytes, name: str = "") -> np.ndarray:
    """Decode DICOM pixel data to uint8 with rescale slope/intercept, VOI LUT/windowing and MONOCHROME1 inversion."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        try:
            import pydicom
            from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
        except ImportError as e:
            raise ImageReadError(f"{name}: reading DICOM needs pydicom: pip install 'medlens[dicom]'") from e
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else str(source), force=True)
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for corrupt data
        raise ImageReadError(f"{name}: unreadable DICOM ({type(e).__name__}: {e})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and not photometric.startswith("MONOCHROME"):
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        return _to_uint8(arr[..., :3])
    if arr.ndim == 3:  # multi-frame: take the middle frame
        arr = arr[arr.shape[0] // 2]
    out = apply_modality_lut(arr, ds).astype(np.float32)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        out = apply_voi_lut(out, ds).astype(np.float32)
    img = _to_uint8(out)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that high = bright, as in MONOCHROME2
        img = 255 - img
    return img


def load_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image held in memory; the format is taken from its bytes, not its name."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    if is_dicom_bytes(data[:132]):
        img = read_dicom(data, name)
        if img.shape[0] * img.shape[1] > max_pixels:
            raise ImageReadError(f"{name}: image is {img.shape[1]}x{img.shape[0]} pixels, over the limit of {max_pixels}")
        return img
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageReadError(f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels}")
            img.load()
            return _from_pil(img, max_pixels)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:  # Pillow refuses huge images from their header alone
        raise ImageReadError(f"{name}: image is over the limit of {max_pixels} pixels ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file into uint8 (H, W) or (H, W, 3).

    Example:
        >>> img = load_image("scan.png")  # doctest: +SKIP
        >>> img.dtype
        dtype('uint8')
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{p}: image file not found") from None
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read ({e})") from None
    return load_image_bytes(data, str(p), max_pixels)
