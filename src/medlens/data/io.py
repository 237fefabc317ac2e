"""Reading images from disk or bytes into uint8 arrays.

Every path goes through :func:`load_image`, so training, evaluation, prediction and serving decode images the
same way: PNG/JPEG/TIFF/BMP (8/16-bit grey, RGB, RGBA, palette, EXIF orientation) via Pillow, and DICOM
(``.dcm`` or the ``DICM`` magic) via pydicom with rescale, VOI LUT/windowing and MONOCHROME1 inversion.
The result is ``uint8`` of shape (H, W) for grey or (H, W, 3) for colour.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("medlens.data")

# Decompression-bomb guard for files: 2**28 pixels (~16k x 16k). The server sets a much lower limit.
MAX_PIXELS = 1 << 28


class ImageReadError(ValueError):
    """An image could not be read; the message names the file."""


def is_dicom_bytes(head: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 using its min/max (16-bit PNGs, float images)."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def from_pil(img, max_pixels: int) -> np.ndarray:
    from PIL import ImageOps

    w, h = img.size
    if w * h > max_pixels:
        raise ImageReadError(f"image is {w}x{h} pixels, over the limit of {max_pixels}")
    img = ImageOps.exif_transpose(img)  # respect camera orientation
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_uint8(np.asarray(img))
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("LA", "1"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGB"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def dicom_bytes(pixels: np.ndarray, bits_stored: int = 12, slope: float = 1.0, intercept: float = 0.0) -> bytes:
    """Encode a 2-D grey image as an uncompressed MONOCHROME2 digital X-ray DICOM file, in memory.

    For fixtures, benchmarks and de-identified examples: no patient attributes are written.

    Example:
        >>> data = dicom_bytes(np.full((8, 8), 1000, np.uint16))  # doctest: +SKIP
        >>> read_dicom(data).shape  # doctest: +SKIP
        (8, 8)
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if pixels.ndim != 2:
        raise ValueError(f"dicom_bytes: a 2-D grey image is needed, got shape {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("image.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.save_as(buf, write_like_original=False)
    return buf.getvalue()


def read_dicom(source: str | Path | bytes, name: str = "") -> np.ndarray:
    """Decode DICOM pixel data to uint8 with rescale slope/intercept, VOI LUT/windowing and MONOCHROME1 inversion."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        try:
            import pydicom
            from pydicom.pixel_data_handlers.util import apply_modality_lut
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
        return to_uint8(arr[..., :3])
    if arr.ndim == 3:  # multi-frame: take the middle frame
        arr = arr[arr.shape[0] // 2]
    out = apply_modality_lut(arr, ds).astype(np.float32)  # rescale slope/intercept (or modality LUT) -> e.g. HU
    window = _window_of(ds)
    if window is not None:
        img = apply_window(out, *window)
    elif "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            data = item.LUTData
            if isinstance(data, bytes):  # stored as OW: 16-bit words (8-bit entries when the descriptor says so)
                lut = np.frombuffer(data, dtype="<u2" if int(item.LUTDescriptor[2]) > 8 else np.uint8).astype(np.float32)
            else:
                lut = np.asarray(data, dtype=np.float32)
            first = float(item.LUTDescriptor[1])  # the stored value mapped to the LUT's first entry
            voi = lut[np.clip(np.rint(out - first), 0, len(lut) - 1).astype(np.int64)]
            lo, hi = float(lut.min()), float(lut.max())  # the LUT's own output range, not the image's
            img = np.clip((voi - lo) * (255.0 / max(hi - lo, 1e-6)) + 0.5, 0, 255).astype(np.uint8)
        except Exception as e:  # malformed LUT: fall back to the full range
            log.warning("%s: VOI LUT not applied (%s); using the full intensity range", name, e)
            img = to_uint8(out)
    else:
        img = to_uint8(out)  # no window in the file: the image's own min..max
    if photometric == "MONOCHROME1":  # 0 is white: invert so that high = bright, as in MONOCHROME2
        img = 255 - img
    return img


def _first(v) -> float | None:
    """First value of a (possibly multi-valued) DICOM number; None when empty."""
    try:
        if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
            v = v[0] if len(v) else None
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _window_of(ds) -> tuple[float, float, str] | None:
    """(center, width, function) of the first VOI window in a dataset, or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
    if c is None or w is None or w <= 0:
        return None
    return c, w, str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a VOI window to uint8 0..255 (DICOM PS3.3 C.11.2.1.2).

    Example:
        >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), center=40, width=400).tolist()
        [0, 128, 255]
    """
    x = x.astype(np.float64)
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = (x - (center - width / 2.0)) / width
    else:  # LINEAR: the standard's half-pixel offsets; width 1 is a threshold
        if width <= 1:
            y = (x > center - 0.5).astype(np.float64)
        else:
            y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(np.floor(y * 255.0 + 0.5), 0, 255).astype(np.uint8)


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
            return from_pil(img, max_pixels)
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
        >>> img.dtype  # doctest: +SKIP
        dtype('uint8')
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{p}: image file not found") from None
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read ({e})") from None
    if p.suffix.lower() == ".dcm" and data and not is_dicom_bytes(data[:132]):
        # a .dcm without the 128-byte preamble and DICM magic (older or raw exports): still DICOM
        img = read_dicom(data, str(p))
        if img.shape[0] * img.shape[1] > max_pixels:
            raise ImageReadError(f"{p}: image is {img.shape[1]}x{img.shape[0]} pixels, over the limit of {max_pixels}")
        return img
    return load_image_bytes(data, str(p), max_pixels)
