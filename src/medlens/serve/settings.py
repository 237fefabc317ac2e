"""Server limits and options (:class:`ServeSettings`) and reading the API key from a file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServeSettings:
    """Server limits and options.

    Attributes:
        api_key: when set, every ``/v1`` route needs ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, and
            the open routes (``/health``, ``/openapi.json``, ``/docs``) say nothing about the model.
        max_upload_bytes: largest request body accepted (all files together).
        max_pixels: largest image (width x height) decoded.
        max_files: most images in one predict request.
        max_batch: most images per forward pass when coalescing concurrent requests.
        max_wait_ms: how long the batcher waits for more requests before running a batch.
        tta: test-time augmentation preset for every prediction (``none``, ``hflip``, ``flips``, ``d4``),
            published by ``/v1/model``.
        max_pixels_in_flight: decoded pixels (width x height, summed over every request) the server holds at
            once; default ``2 * max_pixels``. An image whose decoding would pass it waits for others to finish
            (never less than one image of ``max_pixels`` is admitted, so no request waits forever).
        decode_wait_s: how long an image waits for room in that budget before the request is answered with
            503 ``busy`` (and ``Retry-After``).
        decode_threads: threads that decode and preprocess uploads (default: the number of CPUs).
    """

    api_key: str | None = None
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_files: int = 64
    max_batch: int = 32
    max_wait_ms: float = 2.0
    tta: str = "none"
    max_pixels_in_flight: int | None = None
    decode_wait_s: float = 30.0
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 2)

    @property
    def pixel_budget(self) -> int:
        """The decoded-pixel budget in force: ``max_pixels_in_flight``, at least one image of ``max_pixels``."""
        return max(self.max_pixels_in_flight or 2 * self.max_pixels, self.max_pixels)

    @property
    def tta_preset(self) -> bool | str:
        """The preset as the predictors take it (``False`` for none)."""
        return False if self.tta in ("none", "", None) else self.tta


def read_api_key_file(path: str | Path) -> str:
    """The API key in the first line of ``path`` (so it never appears in ``ps``).

    Raises:
        ValueError: naming the file when it is missing, unreadable or empty.

    Example:
        >>> read_api_key_file("/run/secrets/medlens_key")  # doctest: +SKIP
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--api-key-file {p}: cannot read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None
    key = (text.splitlines() or [""])[0].strip()
    if not key:
        raise ValueError(f"--api-key-file {p}: the first line is empty (expected the API key)")
    return key
