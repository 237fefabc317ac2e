"""A persistent on-disk cache of decoded, resized images, shared by runs (``data.disk_cache``).

Decoding a 1024 px PNG costs 20-40 ms, far more than reading the 224 x 224 uint8 pixels the model sees. The
first epoch decodes each image once and stores its resized pixels (the deterministic part of preprocessing,
:func:`~medlens.data.transforms.geometry`) as one small ``.npy`` file; later epochs, and every later run on the same
files, memory-map those instead of decoding. Augmentation still runs on every access.

* **Key**: the SHA-256 of the file's bytes (the content: a copied or renamed dataset hits, a file rewritten in place
  misses) inside a namespace made of the image size, the channels, this format's version and the Pillow and
  OpenCV versions (a decoder upgrade starts a fresh namespace rather than mixing pixels). A process remembers the
  key of each path it has hashed, so only the first access of a run reads the whole file.
* **Layout**: ``<root>/v1-<namespace>/<2 hex>/<key>.npy``; ``root`` is ``$MEDLENS_CACHE_DIR/images`` or
  ``~/.cache/medlens/images`` (``$XDG_CACHE_HOME`` respected).
* **Safe under concurrent runs and kill -9**: an entry is written to a temp file beside it and renamed into place,
  so a reader sees a whole entry or none; readers never open temp files, and an entry that does not load as the
  expected array (e.g. cut short by a power loss) is deleted and decoded again. Two runs writing one entry write the
  same bytes; the last rename wins.
* **Size-bounded**: when the cache passes ``max_bytes`` the least recently used entries (file modification time,
  refreshed on a hit once per process) are deleted until it is under 90 % of the bound. Each process tracks its own
  writes and rescans the folder every 5 % of the bound, so concurrent writers can overshoot by about that much
  each. A full disk turns writing off for the process with one warning; reading goes on.

Example:
    >>> from medlens.data.transforms import geometry, resolve_preprocessing
    >>> pp = resolve_preprocessing(224, 1)
    >>> cache = DiskImageCache(pp.image_size, pp.channels, max_bytes=2**30)  # doctest: +SKIP
    >>> img = cache.get("scan.png", lambda: geometry(load_image("scan.png", reduce_to=224), pp))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("medlens.data")

#: Version of the entry format and of what an entry holds; bump it when either changes.
FORMAT_VERSION = 1
#: Default bound as a share of the free space on the cache's file system ...
DEFAULT_FREE_SHARE = 0.10
#: ... and at most this many MB.
DEFAULT_CEILING_MB = 20480
#: Temp files older than this (seconds) are left-overs of a killed writer and are removed by an eviction scan.
STALE_TEMP_S = 3600.0


def cache_root() -> Path:
    """medlens' user cache folder: ``$MEDLENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/medlens``, else ``~/.cache/medlens``.

    Example:
        >>> cache_root().name in ("medlens",) or "MEDLENS_CACHE_DIR" in os.environ
        True
    """
    env = os.environ.get("MEDLENS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medlens"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MB chunks; ``hashlib.file_digest`` needs Python 3.11)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def default_max_mb(root: Path) -> int:
    """The bound when ``data.disk_cache_mb`` is unset: 10 % of the free space where the cache lives, at most 20 GB."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 1024
    return int(max(64, min(DEFAULT_CEILING_MB, DEFAULT_FREE_SHARE * free / 2**20)))


def _namespace(image_size: int, channels: int) -> str:
    import cv2
    import PIL

    tag = f"v{FORMAT_VERSION}|{image_size}|{channels}|pillow {PIL.__version__}|opencv {cv2.__version__}"
    return f"v{FORMAT_VERSION}-{image_size}px-{channels}ch-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"


class DiskImageCache:
    """Decoded, resized uint8 images on disk, keyed by file content and preprocessing (see the module docstring).

    Args:
        image_size: the side of the stored images (the model's ``image_size``).
        channels: 1 or 3.
        max_bytes: the bound on the whole cache folder (every namespace), in bytes.
        root: the cache folder (default ``cache_root() / "images"``).

    The object is picklable (DataLoader workers get their own copy; each keeps its own path -> key memory).
    """

    def __init__(self, image_size: int, channels: int, max_bytes: int, root: str | Path | None = None) -> None:
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.max_bytes = int(max_bytes)
        self.root = Path(root) if root is not None else cache_root() / "images"
        self.folder = self.root / _namespace(self.image_size, self.channels)
        self.shape = (self.image_size, self.image_size, self.channels)
        self.hits = 0
        self.misses = 0
        self._keys: dict[str, str] = {}  # path -> content key (this process)
        self._touched: set[str] = set()
        self._writable = True
        self._size_at_scan: int | None = None
        self._added = 0

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_keys"], d["_touched"] = {}, set()  # each worker learns its own
        return d

    # ------------------------------------------------------------------ keys and paths
    def key(self, path: str | Path) -> str:
        """The content key of an image file (SHA-256 of its bytes), remembered per path for this process."""
        p = str(path)
        k = self._keys.get(p)
        if k is None:
            k = file_sha256(p)
            self._keys[p] = k
        return k

    def entry(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    # ------------------------------------------------------------------ read / write
    def load(self, key: str) -> np.ndarray | None:
        """The stored image of ``key`` (read-only, memory-mapped), or None when absent or unreadable."""
        e = self.entry(key)
        try:
            arr = np.load(e, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):  # cut short or foreign: drop it, decode again
            self._unlink(e)
            return None
        if arr.shape != self.shape or arr.dtype != np.uint8:
            del arr
            self._unlink(e)
            return None
        if key not in self._touched:  # least-recently-used order for eviction: once per process is enough
            self._touched.add(key)
            try:
                os.utime(e)
            except OSError:
                pass
        return arr

    def store(self, key: str, img: np.ndarray) -> bool:
        """Write ``img`` as the entry of ``key`` (temp file + rename). False when it was not written."""
        if not self._writable:
            return False
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape != self.shape:
            raise ValueError(f"disk cache: image of shape {img.shape} stored in a cache of {self.shape}")
        e = self.entry(key)
        tmp = None
        try:
            e.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=e.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, img, allow_pickle=False)
            os.replace(tmp, e)
            tmp = None
        except OSError as err:
            self._writable = False
            log.warning("data.disk_cache: cannot write to %s (%s); decoding without it from now on", self.folder, err)
            return False
        finally:
            if tmp is not None:
                self._unlink(Path(tmp))
        self._added += img.nbytes + 128  # the .npy header
        self._maybe_evict()
        return True

    def get(self, path: str | Path, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached image of ``path``, or ``decode()`` (stored for next time).

        ``decode`` must return the image exactly as the cache holds it: ``image_size`` square, ``channels`` deep.
        """
        k = self.key(path)
        arr = self.load(k)
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        img = decode()
        self.store(k, img)
        return img

    # ------------------------------------------------------------------ size bound
    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every entry in the cache folder (all namespaces); stale temp files removed."""
        out: list[tuple[float, int, Path]] = []
        now = time.time()
        for ns in _scandir(self.root):
            if not ns.is_dir():
                continue
            for sub in _scandir(Path(ns.path)):
                if not sub.is_dir():
                    continue
                for f in _scandir(Path(sub.path)):
                    try:
                        st = f.stat()
                    except OSError:
                        continue
                    if f.name.endswith(".tmp"):
                        if now - st.st_mtime > STALE_TEMP_S:
                            self._unlink(Path(f.path))
                        continue
                    if f.name.endswith(".npy"):
                        out.append((st.st_mtime, st.st_size, Path(f.path)))
        return out

    def size_bytes(self) -> int:
        """Bytes held by the whole cache (a folder scan)."""
        return sum(s for _, s, _ in self.entries())

    def _maybe_evict(self) -> None:
        if self._size_at_scan is None:
            self._size_at_scan = self.size_bytes()
            self._added = 0
        estimate = self._size_at_scan + self._added
        if estimate <= self.max_bytes and self._added < 0.05 * self.max_bytes:
            return
        self.evict()

    def evict(self, target: float = 0.9) -> int:
        """Delete least recently used entries until the cache holds at most ``target`` x ``max_bytes``; returns the
        number deleted. Another process deleting the same entries at once is harmless."""
        ents = self.entries()
        total = sum(s for _, s, _ in ents)
        removed = 0
        if total > self.max_bytes:
            for _, size, path in sorted(ents, key=lambda t: t[0]):
                if total <= target * self.max_bytes:
                    break
                self._unlink(path)
                total -= size
                removed += 1
        self._size_at_scan, self._added = total, 0
        if removed:
            log.info("data.disk_cache: evicted %d least recently used images (%.0f MB kept, bound %.0f MB)",
                     removed, total / 2**20, self.max_bytes / 2**20)
        return removed

    @staticmethod
    def _unlink(p: Path) -> None:
        try:
            p.unlink()
        except OSError:
            pass


def _scandir(p: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(p) as it:
            return list(it)
    except OSError:
        return []


def source_side(path: str | Path) -> int | None:
    """The shorter side an image file declares in its header (nothing decoded); None when it cannot be read.

    DICOM files count as large (their decode is costly whatever their size).
    """
    p = str(path)
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        if len(head) >= 132 and head[128:132] == b"DICM" or p.lower().endswith(".dcm"):
            return 1 << 30
        from PIL import Image

        with Image.open(p) as img:
            return int(min(img.size))
    except Exception:  # unreadable: the reader reports it where the image is used
        return None


def disk_cache_for(data_cfg, table, image_size: int, channels: int) -> DiskImageCache | None:
    """The disk cache ``data.disk_cache`` / ``data.disk_cache_mb`` ask for, or None (the config -> kwargs adapter).

    * ``true``: on (an in-memory dataset is refused: its pixels are already in memory);
    * ``false``: off (``disk_cache_mb`` next to it is refused: it could not act);
    * ``auto`` (default): on when the images are files whose first one is at least twice the model's size (or
      DICOM), where decoding costs far more than reading the stored pixels; off for in-memory datasets and for
      files already about the model's size (the cache would hold as many bytes as the sources and save little).

    Example:
        >>> disk_cache_for(cfg.data, table, 224, 1)  # doctest: +SKIP
    """
    mode = getattr(data_cfg, "disk_cache", "auto")
    mb = getattr(data_cfg, "disk_cache_mb", None)
    if mode is False:
        if mb is not None:
            raise ValueError("data.disk_cache_mb: applies only when the disk cache is on (data.disk_cache: false); "
                             "remove one of the two")
        return None
    if table.in_memory:
        if mode is True:
            raise ValueError(f"data.disk_cache: true, but the images of data.kind {data_cfg.kind!r} are held in memory "
                             "already; remove the key")
        return None
    if mode == "auto":
        side = source_side(table.images[0]) if len(table) else None
        if side is None or side < 2 * image_size:
            return None
    root = cache_root() / "images"
    max_bytes = (mb if mb is not None else default_max_mb(root)) * 2**20
    cache = DiskImageCache(image_size, channels, max_bytes, root)
    log.info("data.disk_cache%s: decoded %d px images kept in %s (bound %.0f MB)", " (auto)" if mode == "auto" else "",
             image_size, cache.folder, max_bytes / 2**20)
    return cache
