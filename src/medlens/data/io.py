"""Reading images from disk or bytes into uint8 arrays.

Every path goes through :func:`load_image`, so training, evaluation, prediction and serving decode images the
same way: PNG/JPEG/TIFF/BMP (8/16-bit grey, RGB, RGBA, palette, EXIF orientation) via Pillow, and DICOM
(``.dcm`` or the ``DICM`` magic) via pydicom with rescale, VOI LUT/windowing and MONOCHROME1 inversion.
The result is ``uint8`` of shape (H, W) for grey or (H, W, 3) for colour.

Decoders are bounded: the size an image declares in its header (Pillow's ``size``; DICOM Rows, Columns,
Samples per Pixel and Number of Frames, read without the pixel data) is checked against :data:`MIN_SIDE`,
:data:`MAX_PIXELS` and :data:`MAX_ASPECT` *before* any pixel is decoded, so a small compressed file that
declares a huge image (a decompression bomb) costs no memory. Of a multi-frame DICOM only the middle frame
is decoded. Float images must be finite. Every failure is an :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np

from medlens.data.shards import ShardError, is_member_ref, read_member, ref_name

log = logging.getLogger("medlens.data")

# Limits checked from the header, before decoding; each is overridable by the reading functions' parameters.
#: Largest image decoded, in pixels (width x height): 2**26, 8192 x 8192 (a mammogram is ~4k x 5k).
#: Decoding one such 16-bit image takes ~0.5 GB of working memory; the server sets a lower limit.
MAX_PIXELS = 1 << 26
#: Smallest side, in pixels: a 1x1 or 3x500 "image" is a broken export, not a scan (data.image_size >= 8 too).
MIN_SIDE = 8
#: Largest ratio of the long side to the short one: a 1 x 200000 strip is refused.
MAX_ASPECT = 50.0
#: DICOM with both a VOI LUT Sequence and a Window Center/Width: use the LUT, as pydicom's
#: ``apply_voi_lut(prefer_lut=True)`` does; ``False`` prefers the window.
PREFER_VOI_LUT = True


class ImageReadError(ValueError):
    """An image could not be read; the message names the file."""


def is_dicom_bytes(head: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def check_dimensions(
    width: int,
    height: int,
    name: str,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
) -> None:
    """Refuse an image by the size its header declares, before its pixels are decoded.

    Args:
        width: declared width in pixels.
        height: declared height in pixels.
        name: the file, for the message.
        max_pixels: largest ``width * height``.
        min_side: smallest side in pixels.
        max_aspect: largest ratio of the long side to the short one.

    Raises:
        ImageReadError: one line naming the file, the size and the limit it breaks.

    Example:
        >>> check_dimensions(1, 200000, "strip.png")
        Traceback (most recent call last):
        ...
        medlens.data.io.ImageReadError: strip.png: image is 1x200000 pixels, smaller than the minimum side of 8 px
    """
    w, h = int(width), int(height)
    if min(w, h) < min_side:
        raise ImageReadError(f"{name}: image is {w}x{h} pixels, smaller than the minimum side of {min_side} px")
    if w * h > max_pixels:
        raise ImageReadError(f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels}")
    if max(w, h) > max_aspect * min(w, h):
        raise ImageReadError(
            f"{name}: image is {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1, over the limit of "
            f"{max_aspect:g}:1"
        )


def _require_finite(arr: np.ndarray, name: str) -> None:
    """Float pixels must all be finite: a NaN would silently become black (or poison a min-max scale)."""
    if arr.dtype.kind in "fc":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ImageReadError(f"{name}: {bad} of {arr.size} pixel values are NaN or infinite")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 using its min/max (16-bit PNGs, float images)."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def from_pil(
    img,
    max_pixels: int = MAX_PIXELS,
    name: str = "<PIL image>",
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
) -> np.ndarray:
    """A Pillow image (opened, loaded or not) -> uint8 (H, W) or (H, W, 3); its size is checked before loading."""
    from PIL import ImageOps

    check_dimensions(*img.size, name, max_pixels, min_side, max_aspect)
    img = ImageOps.exif_transpose(img)  # respect camera orientation
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        _require_finite(arr, name)
        return to_uint8(arr)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("LA", "1"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV, ...


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


def _dicom_int(ds, keyword: str, default: int | None, name: str) -> int:
    """An integer attribute of the DICOM header; a missing or non-numeric required one is an error."""
    v = ds.get(keyword, default)
    try:
        return int(v if v not in (None, "") else default)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImageReadError(f"{name}: DICOM {keyword} is {'missing' if v in (None, '') else repr(v)}") from None


def _check_dicom_header(ds, name: str, max_pixels: int, min_side: int, max_aspect: float) -> tuple[int, int, int]:
    """(Rows, Columns, Number of Frames) of a DICOM header, checked against the limits; nothing is decoded."""
    rows, cols = _dicom_int(ds, "Rows", None, name), _dicom_int(ds, "Columns", None, name)
    samples, frames = _dicom_int(ds, "SamplesPerPixel", 1, name), _dicom_int(ds, "NumberOfFrames", 1, name)
    check_dimensions(cols, rows, name, max_pixels, min_side, max_aspect)
    if not 1 <= samples <= 4:
        raise ImageReadError(f"{name}: DICOM SamplesPerPixel is {samples}, expected 1 (grey) or 3 (colour)")
    if frames < 1:
        raise ImageReadError(f"{name}: DICOM NumberOfFrames is {frames}, expected 1 or more")
    return rows, cols, frames


def read_dicom(
    source: str | Path | bytes,
    name: str = "",
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
    prefer_voi_lut: bool = PREFER_VOI_LUT,
) -> np.ndarray:
    """Decode DICOM pixel data to uint8 with rescale slope/intercept, VOI LUT/windowing and MONOCHROME1 inversion.

    The header is read first, without the pixel data: Rows x Columns is checked against the limits before any
    pixel is decoded, whatever the transfer syntax (an RLE or JPEG file declaring 60000 x 60000 is refused
    from its header). Of a multi-frame image only the middle frame is decoded.

    Args:
        source: a file path or the file's bytes.
        name: the file, for messages.
        max_pixels: largest Rows x Columns (x Number of Frames when every frame has to be decoded).
        min_side: smallest side in pixels.
        max_aspect: largest ratio of the long side to the short one.
        prefer_voi_lut: with both a VOI LUT Sequence and a Window Center/Width, apply the LUT (pydicom's
            ``apply_voi_lut(prefer_lut=True)`` order); ``False`` applies the window.

    Raises:
        ImageReadError: unreadable file, a size over the limits, or non-finite pixel values.

    Example:
        >>> read_dicom(dicom_bytes(np.full((8, 8), 1000, np.uint16)), "a.dcm").shape  # doctest: +SKIP
        (8, 8)
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        try:
            import pydicom
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        except ImportError as e:
            raise ImageReadError(f"{name}: reading DICOM needs pydicom: pip install 'medlens[dicom]'") from e

    def read(**kw):
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else str(source), force=True, **kw)

    try:
        head = read(stop_before_pixels=True)  # the header only: nothing decoded, pixel data not even read
    except Exception as e:  # pydicom raises many types for corrupt data
        raise ImageReadError(f"{name}: unreadable DICOM ({type(e).__name__}: {e})") from None
    rows, cols, frames = _check_dicom_header(head, name, max_pixels, min_side, max_aspect)
    try:
        ds = read()
        if _check_dicom_header(ds, name, max_pixels, min_side, max_aspect) != (rows, cols, frames):
            raise ImageReadError(f"{name}: the DICOM header changed while it was read")
        one_frame = hasattr(ds, "pixel_array_options")  # pydicom >= 3 decodes one frame of many
        if one_frame:
            ds.pixel_array_options(index=frames // 2)  # the middle frame only
        elif rows * cols * frames > max_pixels:  # pragma: no cover - pydicom 2.x decodes every frame
            raise ImageReadError(
                f"{name}: {frames} frames of {cols}x{rows} pixels are over the limit of {max_pixels} pixels"
            )
        arr = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as e:  # pydicom raises many types for corrupt data
        raise ImageReadError(f"{name}: unreadable DICOM ({type(e).__name__}: {e})") from None
    if arr.shape[:2] != (rows, cols) and arr.shape[1:3] != (rows, cols):  # a decoder that ignored the header
        raise ImageReadError(f"{name}: decoded pixel data of shape {arr.shape} does not match {cols}x{rows}")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME") and arr.shape[-1] in (3, 4) and arr.ndim >= 3:
        if arr.ndim == 4:  # pragma: no cover - pydicom 2.x: every frame decoded
            arr = arr[arr.shape[0] // 2]
        if photometric.startswith("YBR") and not one_frame:  # pragma: no cover - pydicom >= 3 returns RGB
            from pydicom.pixel_data_handlers.util import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        _require_finite(arr, name)
        return to_uint8(arr[..., :3])
    if arr.ndim == 3:  # pragma: no cover - pydicom 2.x multi-frame: take the middle frame
        arr = arr[arr.shape[0] // 2]
    out = apply_modality_lut(arr, ds).astype(np.float32)  # rescale slope/intercept (or modality LUT) -> e.g. HU
    _require_finite(out, name)
    window = _window_of(ds)
    img = None
    if prefer_voi_lut or window is None:  # pydicom's order: the VOI LUT Sequence first, then the window
        try:
            lut = _voi_lut_of(ds)
            if lut is not None:
                img = apply_voi_lut_uint8(out, *lut)
        except Exception as e:  # malformed LUT: the window if there is one, else the full range
            log.warning("%s: VOI LUT not applied (%s); using %s", name, e,
                        "the window" if window is not None else "the full intensity range")
    if img is None:
        img = apply_window(out, *window) if window is not None else to_uint8(out)  # no VOI: the image's own range
    if photometric == "MONOCHROME1":  # 0 is white: invert so that high = bright, as in MONOCHROME2
        img = 255 - img
    return img


def _voi_lut_of(ds) -> tuple[np.ndarray, float] | None:
    """(LUT entries, first mapped value) of the first VOI LUT Sequence item, or None (pydicom's validity rule)."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    desc = item.LUTDescriptor
    n = int(desc[0]) or 65536  # 0 means 2**16 entries (PS3.3 C.11.2.1.1)
    data = item.LUTData
    if isinstance(data, bytes):  # stored as OW: 16-bit words, as pydicom reads them (8-bit entries if packed)
        lut = np.frombuffer(data, dtype="<u2" if len(data) >= 2 * n else np.uint8).astype(np.float32)
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.float32))
    if len(lut) < n:
        raise ValueError(f"the VOI LUT has {len(lut)} entries, its descriptor says {n}")
    return lut[:n], float(desc[1])


def apply_voi_lut_uint8(x: np.ndarray, lut: np.ndarray, first: float) -> np.ndarray:
    """Map values through a VOI LUT and scale the LUT's own output range to uint8 0..255.

    Values below ``first`` take the first entry, above the last mapped value the last entry, and the integer
    part of a value indexes the LUT, as pydicom's ``apply_voi`` does.

    Example:
        >>> apply_voi_lut_uint8(np.array([0.0, 1.0, 2.0, 9.0]), np.array([0.0, 10.0, 40.0]), first=0).tolist()
        [0, 64, 255, 255]
    """
    if lut.size == 0:
        raise ValueError("the VOI LUT has no entries")
    idx = np.clip(np.floor(x.astype(np.float64) - first), 0, len(lut) - 1).astype(np.int64)
    voi = lut[idx]
    lo, hi = float(lut.min()), float(lut.max())  # the LUT's own output range, not the image's
    return np.clip((voi - lo) * (255.0 / max(hi - lo, 1e-6)) + 0.5, 0, 255).astype(np.uint8)


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


def jpeg_draft_scale(width: int, height: int, reduce_to: int | None) -> int:
    """The DCT scaling (1, 2, 4 or 8) a JPEG of this size is decoded at when the model needs ``reduce_to`` px a side.

    libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size straight from the DCT coefficients (Pillow's
    ``Image.draft``), several times faster than a full decode followed by a resize. The largest factor that keeps
    both sides at least ``reduce_to`` is used, so the resize to the model's size still shrinks (area filter);
    1 (a full decode, exactly as without ``reduce_to``) when the image is not at least twice the target.

    Example:
        >>> jpeg_draft_scale(1024, 1024, 224), jpeg_draft_scale(2000, 1500, 224), jpeg_draft_scale(400, 400, 224)
        (4, 4, 1)
    """
    if not reduce_to:
        return 1
    ratio = min(int(width) // int(reduce_to), int(height) // int(reduce_to))
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


def load_image_bytes(
    data: bytes,
    name: str = "<bytes>",
    max_pixels: int = MAX_PIXELS,
    *,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
    prefer_voi_lut: bool = PREFER_VOI_LUT,
    reduce_to: int | None = None,
) -> np.ndarray:
    """Decode an image held in memory; the format is taken from its bytes, not its name.

    Args:
        data: the file's bytes.
        name: the file, for messages.
        max_pixels: largest width x height decoded (checked from the header, before decoding).
        min_side: smallest side in pixels.
        max_aspect: largest ratio of the long side to the short one.
        prefer_voi_lut: DICOM with both a VOI LUT and a window: apply the LUT (see :func:`read_dicom`).
        reduce_to: the side the image will be resized to (the model's ``image_size``), or None: a JPEG at least
            twice that size is decoded at 1/2, 1/4 or 1/8 scale (:func:`jpeg_draft_scale`), never below it. Other
            formats, and JPEGs less than twice the target, decode exactly as without it.

    Raises:
        ImageReadError: one line naming the file.

    Example:
        >>> load_image_bytes(Path("scan.png").read_bytes(), "scan.png").dtype  # doctest: +SKIP
        dtype('uint8')
    """
    if not data:
        raise ImageReadError(f"{name}: empty file")
    if is_dicom_bytes(data[:132]):
        return read_dicom(data, name, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect,
                          prefer_voi_lut=prefer_voi_lut)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            check_dimensions(*img.size, name, max_pixels, min_side, max_aspect)
            if reduce_to and img.format in ("JPEG", "MPO") and jpeg_draft_scale(*img.size, reduce_to) > 1:
                img.draft(img.mode, (int(reduce_to), int(reduce_to)))  # same mode: only the scale changes
            img.load()
            return from_pil(img, max_pixels, name, min_side, max_aspect)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:  # Pillow refuses huge images from their header alone
        raise ImageReadError(f"{name}: image is over the limit of {max_pixels} pixels ({e})") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        detail = re.sub(r"\s*<_io\.\w+ object at 0x[0-9a-f]+>", "", str(e)).strip() or type(e).__name__
        raise ImageReadError(f"{name}: not a readable image ({detail})") from None


def load_image(
    path: str | Path,
    max_pixels: int = MAX_PIXELS,
    *,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
    prefer_voi_lut: bool = PREFER_VOI_LUT,
    reduce_to: int | None = None,
) -> np.ndarray:
    """Read an image file into uint8 (H, W) or (H, W, 3).

    A DICOM file (``DICM`` magic, or a ``.dcm`` name) has its header read and checked before its pixel data is
    read at all; other formats are checked from the header Pillow reads before decoding.

    Args:
        path: the image file, or a tar shard member reference (:func:`medlens.data.shards.member_ref`).
        max_pixels: largest width x height decoded.
        min_side: smallest side in pixels.
        max_aspect: largest ratio of the long side to the short one.
        prefer_voi_lut: DICOM with both a VOI LUT and a window: apply the LUT (see :func:`read_dicom`).
        reduce_to: the model's image size: JPEGs at least twice as large decode at reduced scale
            (see :func:`load_image_bytes`); None decodes at full size.

    Raises:
        ImageReadError: one line naming the file.

    Example:
        >>> img = load_image("scan.png")  # doctest: +SKIP
        >>> img.dtype  # doctest: +SKIP
        dtype('uint8')
    """
    if is_member_ref(path):  # a member of a tar shard (kind: webdataset), read at random by its byte offset
        try:
            data = read_member(str(path))
        except ShardError as e:
            raise ImageReadError(str(e)) from None
        return load_image_bytes(data, ref_name(str(path)), max_pixels, min_side=min_side, max_aspect=max_aspect,
                                prefer_voi_lut=prefer_voi_lut, reduce_to=reduce_to)
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except FileNotFoundError:
        raise ImageReadError(f"{p}: image file not found") from None
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read ({e})") from None
    if head and (is_dicom_bytes(head) or p.suffix.lower() == ".dcm"):
        # by path, so that pydicom reads the header alone first; a .dcm without the 128-byte preamble and DICM
        # magic (older or raw exports) is still DICOM
        return read_dicom(p, str(p), max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect,
                          prefer_voi_lut=prefer_voi_lut)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read ({e})") from None
    return load_image_bytes(data, str(p), max_pixels, min_side=min_side, max_aspect=max_aspect,
                            prefer_voi_lut=prefer_voi_lut, reduce_to=reduce_to)
