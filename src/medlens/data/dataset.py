"""Torch datasets and loaders over a :class:`SampleTable`.

Batches are :class:`Batch` dataclasses (images, targets with NaN for unknown, the known-mask, row indices and
optional metadata), not tuples of unknown meaning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medlens.data.diskcache import DiskImageCache
from medlens.data.io import ImageReadError, load_image
from medlens.data.samples import SampleTable
from medlens.data.transforms import Preprocessing, geometry

log = logging.getLogger("medlens.data")

#: Bytes a cached image costs beyond its pixels (the ndarray object and the list slot that holds it).
ARRAY_OVERHEAD_BYTES = 128
#: Ceiling of the default image cache, in MB (``data.cache_mb`` unset).
DEFAULT_CACHE_CEILING_MB = 4096


def available_memory_mb() -> float | None:
    """``MemAvailable`` from ``/proc/meminfo`` in MB (memory the kernel can hand out without swapping), else the
    free physical pages from ``os.sysconf``; None when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def default_cache_mb() -> int:
    """The image cache budget when ``data.cache_mb`` is unset: 25 % of the available memory, at most 4096 MB.

    A quarter leaves room for the model, the optimiser, loader workers and whatever else runs on the machine;
    1024 MB when the available memory cannot be read.

    Example:
        >>> 0 < default_cache_mb() <= 4096
        True
    """
    avail = available_memory_mb()
    if avail is None:
        return 1024
    return int(min(0.25 * avail, DEFAULT_CACHE_CEILING_MB))


def cached_image_bytes(pp: Preprocessing) -> int:
    """Bytes one decoded, resized uint8 image takes in the cache (``image_size``² x channels + overhead)."""
    return pp.image_size * pp.image_size * pp.channels + ARRAY_OVERHEAD_BYTES


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images: float32 (B, C, H, W), normalised.
        targets: float32 (B, K); NaN where the label is unknown.
        mask: bool (B, K); True where the label is known.
        index: int64 (B,) row numbers in the table the loader was built on.
        metadata: float32 (B, M) encoded tabular features, or None.
    """

    images: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor
    metadata: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def collate(items: list[dict | None]) -> Batch | None:
    items = [it for it in items if it is not None]  # skipped unreadable images (on_bad_image: skip)
    if not items:
        return None
    t = torch.from_numpy(np.stack([it["targets"] for it in items]))
    meta = None
    if items[0].get("metadata") is not None:
        meta = torch.from_numpy(np.stack([it["metadata"] for it in items]).astype(np.float32))
    return Batch(
        images=torch.from_numpy(np.stack([it["image"] for it in items])),
        targets=t,
        mask=~torch.isnan(t),
        index=torch.tensor([it["index"] for it in items], dtype=torch.int64),
        metadata=meta,
    )


class ImageDataset(Dataset):
    """Rows of a table, decoded and transformed.

    Args:
        table: the samples.
        transform: uint8 image -> float32 (C, H, W), from :func:`medlens.data.transforms.make_transform`.
        pp: preprocessing; with ``cache=True`` images are decoded and resized once and kept in memory. When given,
            JPEGs at least twice ``pp.image_size`` decode at reduced scale (``load_image(reduce_to=...)``).
        cache: keep decoded, resized uint8 images in memory.
        cache_bytes: with ``cache``, the most bytes the cache may take (None: every row). Rows are decoded in
            table order until the next one would pass the budget; the rest are read from disk on every access.
        on_bad_image: ``skip`` drops unreadable images (listed in ``self.skipped``), ``error`` raises.
        metadata_encoder: maps a row's metadata dict to a float vector (fusion models), or None.
        disk_cache: a :class:`~medlens.data.diskcache.DiskImageCache` (needs ``pp``): rows not held in memory are
            read from it instead of decoded, and decoded into it on a miss; it also fills the memory cache.
    """

    def __init__(
        self,
        table: SampleTable,
        transform: Callable[[np.ndarray], np.ndarray],
        pp: Preprocessing | None = None,
        cache: bool = False,
        on_bad_image: str = "error",
        metadata_encoder: Callable[[SampleTable], np.ndarray] | None = None,
        cache_bytes: int | None = None,
        disk_cache: DiskImageCache | None = None,
    ) -> None:
        if disk_cache is not None and (pp is None or (disk_cache.image_size, disk_cache.channels) != (pp.image_size, pp.channels)):
            raise ValueError("ImageDataset: a disk cache needs the preprocessing it was made for (pp)")
        self.table = table
        self.transform = transform
        self.pp = pp
        self.disk_cache = disk_cache if not table.in_memory else None
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self.metadata = metadata_encoder(table) if metadata_encoder is not None else None
        self._cache: list[np.ndarray | None] | np.ndarray | None = None
        self.cache_nbytes = 0  # bytes held by decoded images (0 for in-memory tables: they hold their own)
        if table.in_memory:
            self._cache = table.images
        elif cache and pp is not None:
            self._cache = self._decode_some(pp, cache_bytes)

    @property
    def cached(self) -> int:
        """How many rows are served from memory (the first ``cached`` rows of the table)."""
        return 0 if self._cache is None else len(self._cache)

    def _decode_some(self, pp: Preprocessing, budget: int | None) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for p in self.table.images:
            if budget is not None and self.cache_nbytes + cached_image_bytes(pp) > budget:
                break  # the rest is read from disk each time
            try:
                img = self._read(p, resized=True)  # resized once; the transform's resize is then a no-op
                if isinstance(img, np.memmap):
                    img = np.array(img)  # a private copy, not one memory map per row (kernels cap their number)
            except ImageReadError:
                if self.on_bad_image == "error":
                    raise
                self.skipped.append(str(p))
                out.append(None)
                continue
            out.append(img)
            self.cache_nbytes += img.nbytes + ARRAY_OVERHEAD_BYTES
        if self.skipped:
            log.warning("skipped %d unreadable images, e.g. %s", len(self.skipped), self.skipped[:3])
        return out

    def __len__(self) -> int:
        return len(self.table)

    def _read(self, path, resized: bool = False) -> np.ndarray:
        """Decode one file: from the disk cache when there is one (already resized), at reduced JPEG scale where
        the model's size allows; ``resized`` also applies the geometry when there is no disk cache."""
        pp = self.pp
        if pp is None:
            return load_image(path)
        if self.disk_cache is not None:
            return self.disk_cache.get(path, lambda: geometry(load_image(path, reduce_to=pp.image_size), pp))
        img = load_image(path, reduce_to=pp.image_size)
        return geometry(img, pp) if resized else img

    def load(self, i: int) -> np.ndarray | None:
        if self._cache is not None and i < len(self._cache):
            return self._cache[i]
        try:
            return self._read(self.table.images[i])
        except ImageReadError:
            if self.on_bad_image == "error":
                raise
            log.warning("skipping unreadable image %s", self.table.images[i])
            return None

    def __getitem__(self, i: int) -> dict | None:
        img = self.load(i)
        if img is None:
            return None
        key = getattr(i, "key", None)  # an EpochIndex: augment from (seed, epoch, draw), not the worker's generator
        return {
            "image": self.transform(img) if key is None else self.transform(img, seed=key),
            "targets": self.table.targets[i],
            "index": int(i),
            "metadata": None if self.metadata is None else self.metadata[i],
        }


def default_num_workers(table: SampleTable, cached: bool) -> int:
    """In-memory or cached data needs no workers (process start-up costs more than it saves on 2 cores)."""
    if table.in_memory or cached:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class EpochIndex(int):
    """A row index that carries an augmentation key (from the run's seed, the epoch and the draw's position).

    The dataset seeds the row's augmentation from the key, so the draws do not depend on which
    data-loader worker reads the row or on that worker's history: a run resumed after ``kill -9`` (fresh workers)
    augments every later epoch exactly as the uninterrupted run did.

    Example:
        >>> i = EpochIndex(7, 42); (int(i), i.key)
        (7, 42)
    """

    key: int

    def __new__(cls, value: int, key: int) -> EpochIndex:
        obj = super().__new__(cls, value)
        obj.key = key
        return obj

    def __reduce__(self):  # pickled to worker processes with the key
        return (EpochIndex, (int(self), self.key))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Row order for one epoch that depends only on ``(seed, epoch)``: a permutation, or weighted draws.

    Lightning calls ``set_epoch`` before every epoch (also after a resume), so a resumed run visits the rows
    in the same order as an uninterrupted one; ``torch``'s own samplers advance one generator instead.

    Args:
        n: number of rows.
        seed: the run's seed.
        weights: per-row sampling weights (draws with replacement), or None for a shuffled permutation.

    Example:
        >>> s = EpochSampler(5, seed=1); s.set_epoch(3); a = list(s); s.set_epoch(3)
        >>> a == list(s) and sorted(a) == [0, 1, 2, 3, 4]
        True
    """

    def __init__(self, n: int, seed: int = 0, weights: np.ndarray | torch.Tensor | None = None) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63 - 1))
        if self.weights is None:
            rows = torch.randperm(self.n, generator=g).tolist()
        else:
            rows = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        # each draw carries its own augmentation key (a row drawn twice is augmented twice, differently)
        base = ((self.seed * 1_000_003 + self.epoch) * 1_000_003) % (2**62)
        return iter(EpochIndex(r, base + pos) for pos, r in enumerate(rows))


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    sampler: torch.utils.data.Sampler | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    if shuffle and sampler is None:
        sampler = EpochSampler(len(dataset), seed)  # reproducible per epoch, so resume is exact
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        generator=g,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


def weighted_sampler(table: SampleTable, seed: int = 0) -> EpochSampler:
    """Sample rows with weight inversely proportional to their class frequency.

    Multi-label rows take the weight of their rarest positive label (all-negative rows: the negative rate).
    """
    t = np.nan_to_num(table.targets, nan=0.0)
    if table.label_space.exclusive:
        counts = t.sum(axis=0)
        cls = t.argmax(axis=1)
        w = 1.0 / np.maximum(counts[cls], 1.0)
    else:
        pos = np.maximum(t.sum(axis=0), 1.0)
        neg_rows = max(float((t.sum(axis=1) == 0).sum()), 1.0)
        inv = np.where(t > 0, 1.0 / pos[None, :], 0.0)
        w = np.where(t.sum(axis=1) > 0, inv.max(axis=1), 1.0 / neg_rows)
    return EpochSampler(len(w), seed, weights=w)  # draws with replacement, order fixed by (seed, epoch)
