"""What the routes do with an upload: read it within the limit, decode it within the pixel budget, parse metadata.

Decoding is budgeted twice: per image (``max_pixels``, checked from the header before any pixel is decoded) and
across requests (:class:`PixelBudget`, the decoded pixels the whole server holds at once), so many concurrent
large images wait their turn instead of being decoded all at once.
"""

from __future__ import annotations

import asyncio
import io
from collections import deque

import numpy as np
from fastapi import UploadFile

from medlens.serve.errors import ApiError

#: Longest side of a ``/v1/preview`` PNG, in pixels.
PREVIEW_MAX_SIDE = 1024


async def read_upload(f: UploadFile, max_bytes: int) -> bytes:
    """The bytes of one uploaded file; 413 over ``max_bytes``, 400 when empty."""
    data = await f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"{f.filename}: file is larger than {max_bytes} bytes")
    if not data:
        raise ApiError(400, "empty_file", f"{f.filename or 'upload'}: the file is empty")
    return data


def safe_name(name: str | None) -> str:
    """A client-given file name as a plain label (never used as a path): last component, printable, 200 chars."""
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:200] or "upload"


def header_safe(text: str) -> str:
    """HTTP headers carry latin-1 only: other characters are escaped (``\\uXXXX``)."""
    return text.encode("latin-1", "backslashreplace").decode("latin-1") if text.isascii() else text.encode("ascii", "backslashreplace").decode("ascii")


# ------------------------------------------------------------------------------------------ decoding
def declared_pixels(data: bytes, max_pixels: int) -> int:
    """Width x height an image declares in its header (0 when unreadable or over ``max_pixels``: such an image
    is refused from its header by :func:`decode_image` without decoding a pixel)."""
    from medlens.data.io import is_dicom_bytes

    try:
        if is_dicom_bytes(data[:132]):
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            n = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:  # the header only
                n = int(im.size[0]) * int(im.size[1])
    except Exception:  # noqa: BLE001 -- unreadable: decode_image says why, costing nothing
        return 0
    return n if 0 < n <= max_pixels else 0


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode an upload to uint8; 413 for an image over ``max_pixels``, 415 for an unreadable one."""
    from medlens.data.io import ImageReadError, load_image_bytes

    try:
        return load_image_bytes(data, name, max_pixels)
    except ImageReadError as e:
        msg = str(e)
        if "over the limit" in msg and "aspect ratio" not in msg:  # too many pixels; a thin strip is unreadable (415)
            raise ApiError(413, "too_many_pixels", msg) from None
        raise ApiError(415, "unreadable_image", msg) from None


class PixelBudget:
    """The decoded pixels the server holds at once, across requests; requests over it wait (first come, first
    served) and get 503 ``busy`` after ``timeout`` seconds.

    An image never asks for more than the whole budget, so one image alone is always admitted.

    Example:
        >>> budget = PixelBudget(100_000_000)
        >>> n = await budget.acquire(49_000_000, timeout=30.0, name="scan.png")  # doctest: +SKIP
        >>> budget.release(n)  # doctest: +SKIP
    """

    def __init__(self, total: int) -> None:
        self.total = int(total)
        self.in_flight = 0
        self.peak = 0  # the most pixels held at once (for tests and /health-like diagnostics)
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        """Images waiting for room."""
        return len(self._waiters)

    def _take(self, n: int) -> None:
        self.in_flight += n
        self.peak = max(self.peak, self.in_flight)

    async def acquire(self, n: int, timeout: float, name: str = "image") -> int:
        """Wait until ``n`` pixels fit; returns what was taken (pass it to :meth:`release`)."""
        n = min(max(int(n), 0), self.total)
        if not self._waiters and self.in_flight + n <= self.total:
            self._take(n)
            return n
        entry = (n, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(entry[1], timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if entry[1].done() and not entry[1].cancelled():
                self.release(n)  # granted just as the wait ended
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()  # the queue's head may have changed
            if isinstance(e, asyncio.CancelledError):
                raise
            raise ApiError(503, "busy", f"{name}: the server is decoding {self.in_flight} pixels of its budget of {self.total}; "
                                        f"retry in a moment", headers={"Retry-After": "1"}) from None
        return n

    def release(self, n: int) -> None:
        """Give back pixels taken by :meth:`acquire`."""
        self.in_flight -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight + self._waiters[0][0] <= self.total:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self._take(n)
                fut.set_result(None)


# ------------------------------------------------------------------------------------------ the upload fields' schemas
#: an uploaded file in the OpenAPI contract: bytes, never empty (an empty file is refused with 400)
FILE_SCHEMA = {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}


def optional_text(schema: dict) -> None:
    """The schema of an optional text form field (``json_schema_extra``): a string when sent, left out otherwise
    (a multipart part has no null: FastAPI's ``anyOf [string, null]`` would invite the text ``null``)."""
    schema.pop("anyOf", None)
    schema["type"] = "string"


def metadata_schema(max_items: int | None = None) -> dict:
    """The ``metadata`` form field in the OpenAPI contract: a JSON part (an object, a list of objects or null), as
    :func:`parse_metadata` reads it; a list has one entry per file (``max_items``: 1 for the one-image routes)."""
    listed = {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "object"}, {"type": "null"}]}}
    if max_items is not None:
        listed["maxItems"] = max_items
    return {"anyOf": [{"type": "object"}, listed, {"type": "null"}]}


#: ``metadata`` of ``/v1/predict`` (a list: one entry per file) and of the one-image routes
METADATA_SCHEMA = metadata_schema()
METADATA_ONE_SCHEMA = metadata_schema(max_items=1)


# ------------------------------------------------------------------------------------------ metadata
def parse_metadata(text: str | None, n: int) -> list[dict | None] | None:
    """The ``metadata`` form field: a JSON object (every image), a list of ``n`` objects, or JSON ``null`` (none);
    422 naming the problem."""
    from medlens.data.metadata import MetadataError, parse_metadata_json

    if text is None or text.strip() == "":
        return None
    try:
        obj = parse_metadata_json(text, "metadata")
    except MetadataError as e:
        raise ApiError(422, "bad_metadata", str(e)) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts (4300)
        raise ApiError(422, "bad_metadata", f"metadata: not valid JSON ({e})") from None
    if obj is None:  # JSON null: no metadata, as the schema says
        return None
    if isinstance(obj, dict):
        return [obj] * n
    if isinstance(obj, list) and len(obj) == n and all(isinstance(x, dict) or x is None for x in obj):
        return obj
    raise ApiError(422, "bad_metadata", f"metadata must be a JSON object or a list of {n} objects")


def encode_metadata(predictor, rows: list[dict | None] | None, n: int) -> np.ndarray | None:
    """The encoded metadata of a fusion model (None otherwise); a value the encoder refuses is the client's 422."""
    from medlens.data.metadata import MetadataError

    if predictor.meta_encoder is None:
        return None
    try:
        return predictor.encode_metadata(rows, n)
    except (MetadataError, OverflowError) as e:
        raise ApiError(422, "bad_metadata", str(e) if str(e).startswith("metadata") else f"metadata: {e}") from None


# ------------------------------------------------------------------------------------------ preview
def preview_png(img: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """A PNG of a decoded image, its longest side at most ``max_side`` (never enlarged)."""
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
