"""Split leakage audit (``medlens split audit CONFIG``): every group (patient/exam) found in more than one split,
and every duplicated image.

The audit reads the dataset and makes the splits exactly as training would (same config, same seed), but
does not stop at the first leak: it lists them all, with how many images each leaking group has in each
split. Training itself refuses leaking splits unless ``data.split.allow_group_leakage: true``.

Duplicates (:func:`find_duplicates`), within and across splits:

* **exact**: identical file bytes (SHA-256 of the file; of the pixel array for in-memory datasets);
* **near**: a 255-bit DCT perceptual hash (:func:`perceptual_hash`) within :data:`NEAR_DUPLICATE_BITS` bits
  (Hamming distance) of another image's, identical files not counted again. The same radiograph re-encoded as JPEG
  at quality 50, resized, brightened or given 20 % more contrast stays within 14 bits; on the 5,840 Kermany chest
  X-rays no two different files come closer than 40 bits except one re-saved copy at 0. Crops and shifts are not
  detected (the hash describes the whole image).

An exact or near duplicate in two splits makes the audit fail, as a patient in two splits does: the model is
then scored on images it was trained on.

Example:
    >>> from medlens.config import load_config
    >>> report = audit_config(load_config("configs/nih.yaml"))  # doctest: +SKIP
    >>> report.pair_counts  # doctest: +SKIP
    {'train/val': 15, 'train/test': 8, 'val/test': 9}
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from medlens.data.diskcache import file_sha256
from medlens.data.io import ImageReadError, load_image
from medlens.data.samples import SampleTable
from medlens.data.splits import SPLIT_NAMES, Splits, find_group_leaks, split_indices

log = logging.getLogger("medlens.data")

#: Bits of the perceptual hash: the 16 x 16 lowest DCT frequencies of a 64 x 64 grey thumbnail, less the DC term.
PHASH_BITS = 255
#: Hamming distance (bits of :data:`PHASH_BITS`) at or below which two images are near-duplicates: ~9 % of the bits.
#: Re-encoding (JPEG quality 50: <= 10 bits), resizing (<= 8), brightness (<= 2) and +20 % contrast (<= 14) stay
#: below it; distinct Kermany chest X-rays (17 million pairs, all alike in layout) are all 40 bits or more apart.
NEAR_DUPLICATE_BITS = 24
#: Examples kept per kind of duplicate in a report (every pair is counted).
MAX_EXAMPLES = 20


@dataclass
class DuplicateReport:
    """Exact and near-duplicate images of an audit (see the module docstring for the two hashes).

    Attributes:
        exact_method: how exact duplicates are found.
        near_method: how near-duplicates are found, with the threshold.
        near_bits: the Hamming threshold used.
        images: images hashed.
        exact_sets: sets of identical images (2 or more each).
        exact_copies: images that are a copy of another (sum over sets of size - 1).
        exact_pairs: ``"train/train"``, ``"train/test"``, ... -> pairs of identical images in that pair of splits.
        near_pairs: the same for near-duplicate pairs (identical files are not counted here).
        exact_examples: up to :data:`MAX_EXAMPLES` sets, cross-split ones first: ``[[split, id], ...]``.
        near_examples: up to :data:`MAX_EXAMPLES` pairs, cross-split ones first: ``[bits, split, id, split, id]``.
        unreadable: images that could not be read (hashed by neither method), at most :data:`MAX_EXAMPLES` named.
        num_unreadable: how many.
    """

    exact_method: str
    near_method: str
    near_bits: int
    images: int
    exact_sets: int = 0
    exact_copies: int = 0
    exact_pairs: dict[str, int] = field(default_factory=dict)
    near_pairs: dict[str, int] = field(default_factory=dict)
    exact_examples: list[list[list[str]]] = field(default_factory=list)
    near_examples: list[list[Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    num_unreadable: int = 0

    @staticmethod
    def _across(counts: dict[str, int]) -> int:
        return sum(n for k, n in counts.items() if k.split("/")[0] != k.split("/")[1])

    @property
    def exact_across(self) -> int:
        """Pairs of identical images that lie in two different splits."""
        return self._across(self.exact_pairs)

    @property
    def near_across(self) -> int:
        """Near-duplicate pairs that lie in two different splits."""
        return self._across(self.near_pairs)

    @property
    def ok(self) -> bool:
        """True when no duplicate (exact or near) lies in two splits."""
        return self.exact_across == 0 and self.near_across == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "exact_across_splits": self.exact_across, "near_across_splits": self.near_across}

    def to_lines(self, max_examples: int = 10) -> list[str]:
        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k}: {v}" for k, v in d.items() if v) or "none"

        n_exact = sum(self.exact_pairs.values())
        lines = [f"exact duplicates ({self.exact_method}): {self.exact_sets} sets of identical images "
                 f"({self.exact_copies} copies, {n_exact} pairs: {counts(self.exact_pairs)})"]
        lines.append(f"  {self.exact_across} pairs across splits" + (" -- FAIL" if self.exact_across else ""))
        for ex in self.exact_examples[:max_examples]:
            lines.append("  " + " = ".join(f"{i} ({sp})" for sp, i in ex))
        lines.append(f"near duplicates ({self.near_method}; identical files not counted again): "
                     f"{sum(self.near_pairs.values())} pairs ({counts(self.near_pairs)})")
        lines.append(f"  {self.near_across} pairs across splits" + (" -- FAIL" if self.near_across else ""))
        for bits, sa, ia, sb, ib in self.near_examples[:max_examples]:
            lines.append(f"  {ia} ({sa}) ~ {ib} ({sb}): {bits} bits apart")
        if self.num_unreadable:
            lines.append(f"{self.num_unreadable} images could not be read and were not compared, e.g. {self.unreadable[0]}")
        return lines


@dataclass
class AuditReport:
    """Result of a split audit.

    Attributes:
        source: the dataset.
        method: how the splits were made (predefined, group, stratified).
        sizes: images per split.
        groups_per_split: distinct groups per split.
        leaks: group -> the splits it appears in (only groups in two or more).
        pair_counts: ``"train/val"`` -> number of groups shared by that pair of splits.
        images: group -> split -> number of images, for leaking groups.
        duplicates: exact and near-duplicate images (:func:`find_duplicates`), or None when not looked for.
        groups_audited: False when the dataset has no group ids (then only duplicates were audited).
    """

    source: str
    method: str
    sizes: dict[str, int]
    groups_per_split: dict[str, int]
    leaks: dict[str, list[str]] = field(default_factory=dict)
    pair_counts: dict[str, int] = field(default_factory=dict)
    images: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates: DuplicateReport | None = None
    groups_audited: bool = True

    @property
    def ok(self) -> bool:
        """True when no group, and no exact or near-duplicate image, appears in two splits."""
        return not self.leaks and (self.duplicates is None or self.duplicates.ok)

    def as_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "ok": self.ok, "num_leaking_groups": len(self.leaks)}
        if self.duplicates is not None:
            d["duplicates"] = self.duplicates.as_dict()
        return d

    def to_text(self, max_groups: int = 50) -> str:
        """A human-readable report."""
        lines = [f"split audit of {self.source} ({self.method} split)"]
        lines.append("  " + ", ".join(f"{k}: {self.sizes[k]} images / {self.groups_per_split.get(k, 0)} groups" for k in self.sizes))
        if not self.groups_audited:
            lines.append("the dataset has no group ids (patient/examination): patient leakage not audited")
        elif not self.leaks:
            lines.append("no group appears in more than one split")
        else:
            lines.append(f"{len(self.leaks)} groups appear in more than one split -- FAIL:")
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in self.pair_counts.items()))
            for g, parts in list(self.leaks.items())[:max_groups]:
                lines.append(f"  {g}: " + ", ".join(f"{s} ({self.images[g][s]} images)" for s in parts))
            if len(self.leaks) > max_groups:
                lines.append(f"  ... and {len(self.leaks) - max_groups} more")
        if self.duplicates is not None:
            lines += self.duplicates.to_lines()
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ duplicates
def perceptual_hash(img: np.ndarray) -> np.ndarray:
    """A 255-bit DCT perceptual hash (pHash) of a uint8 image, as 4 ``uint64`` words (the last bit is always 0).

    The image is made grey, shrunk to 64 x 64 (area filter), transformed by a 2-D DCT; each of the 16 x 16 lowest
    frequencies except the DC term becomes one bit: above the median of the 255 or not. Brightness, mild
    contrast changes, resizing and re-encoding move few bits; a different image moves about half of them.

    Example:
        >>> a = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
        >>> int(np.bitwise_count(perceptual_hash(a) ^ perceptual_hash(np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8))).sum())
        0
    """
    import cv2

    g = img
    if g.ndim == 3:
        g = g[:, :, 0] if g.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(g[:, :, :3]), cv2.COLOR_RGB2GRAY)
    a = cv2.resize(np.ascontiguousarray(g), (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    d = cv2.dct(a)[:16, :16].ravel()[1:]  # the DC term is the mean brightness: left out
    bits = np.append(d > np.median(d), False)
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _hash_row(table: SampleTable, i: int) -> tuple[str | None, np.ndarray | None]:
    """(exact hash, perceptual hash) of one row; None where the image cannot be read."""
    if table.in_memory:
        arr = np.ascontiguousarray(table.images[i])
        h = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode())
        h.update(arr.tobytes())
        return h.hexdigest(), perceptual_hash(arr)
    path = str(table.images[i])
    try:
        exact = file_sha256(path)
    except OSError:
        return None, None
    try:
        img = load_image(path, reduce_to=64)  # JPEGs decode at reduced scale: the hash needs 64 x 64
    except ImageReadError:
        return exact, None
    return exact, perceptual_hash(img)


def _pair_key(a: str, b: str) -> str:
    order = {n: i for i, n in enumerate(SPLIT_NAMES)}
    a, b = sorted((a, b), key=lambda x: (order.get(x, 99), x))
    return f"{a}/{b}"


def find_duplicates(
    table: SampleTable,
    parts: dict[str, np.ndarray],
    near_bits: int = NEAR_DUPLICATE_BITS,
    workers: int | None = None,
) -> DuplicateReport:
    """Exact and near-duplicate images among the rows of ``parts``, counted per pair of splits.

    Args:
        table: the dataset (files or in-memory images).
        parts: split name -> row indices (a row in no part is not looked at).
        near_bits: Hamming distance of the perceptual hashes at or below which two images are near-duplicates
            (default :data:`NEAR_DUPLICATE_BITS` of :data:`PHASH_BITS`); negative: no near-duplicate search.
        workers: threads that read and hash files (default: the CPU count, at most 8).

    Returns:
        :class:`DuplicateReport`.

    Example:
        >>> rep = find_duplicates(table, {"train": np.arange(100), "test": np.arange(100, 120)})  # doctest: +SKIP
        >>> rep.exact_pairs  # doctest: +SKIP
        {'train/train': 3}
    """
    rows: list[int] = []
    split_of: list[str] = []
    for name, idx in parts.items():
        for i in np.asarray(idx, dtype=np.int64).tolist():
            rows.append(i)
            split_of.append(name)
    n = len(rows)
    workers = workers or min(8, os.cpu_count() or 1)
    log.info("split audit: hashing %d images (%d threads)", n, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashed = list(pool.map(lambda i: _hash_row(table, i), rows, chunksize=16))
    ids = [str(table.ids[i]) for i in rows]
    rep = DuplicateReport(
        exact_method="identical bytes: SHA-256 of the file" + (" (of the pixel array: in-memory images)" if table.in_memory else ""),
        near_method=f"{PHASH_BITS}-bit DCT perceptual hash, Hamming distance <= {near_bits} bits",
        near_bits=int(near_bits), images=n,
    )
    unread = [ids[k] for k, (e, p) in enumerate(hashed) if p is None]
    rep.num_unreadable, rep.unreadable = len(unread), unread[:MAX_EXAMPLES]
    # ---- exact: identical hashes
    by_hash: dict[str, list[int]] = {}
    for k, (e, _) in enumerate(hashed):
        if e is not None:
            by_hash.setdefault(e, []).append(k)
    sets = [ks for ks in by_hash.values() if len(ks) > 1]
    exact_id = np.full(n, -1, dtype=np.int64)  # which exact set a row belongs to (near pairs skip those)
    for s_no, ks in enumerate(sets):
        exact_id[ks] = s_no
        for a, b in combinations(ks, 2):
            key = _pair_key(split_of[a], split_of[b])
            rep.exact_pairs[key] = rep.exact_pairs.get(key, 0) + 1
    rep.exact_sets = len(sets)
    rep.exact_copies = sum(len(ks) - 1 for ks in sets)
    sets.sort(key=lambda ks: (len({split_of[k] for k in ks}) == 1, ids[ks[0]]))  # cross-split sets first
    rep.exact_examples = [[[split_of[k], ids[k]] for k in ks] for ks in sets[:MAX_EXAMPLES]]
    # ---- near: Hamming distance of the perceptual hashes, every pair once (blocks bound the memory)
    ok = [k for k, (_, p) in enumerate(hashed) if p is not None]
    if near_bits >= 0 and len(ok) > 1:
        H = np.stack([hashed[k][1] for k in ok])  # (m, 4) uint64
        okr = np.asarray(ok)
        m = len(ok)
        block = max(1, min(512, (1 << 23) // m))
        found: list[tuple[int, int, int]] = []
        for i0 in range(0, m, block):
            i1 = min(i0 + block, m)
            rest = H[i0:]
            dist = np.zeros((i1 - i0, m - i0), dtype=np.uint16)
            for w in range(H.shape[1]):
                dist += np.bitwise_count(H[i0:i1, None, w] ^ rest[None, :, w]).astype(np.uint16)
            upper = np.arange(m - i0)[None, :] > np.arange(i1 - i0)[:, None]  # j > i: each pair once
            a_idx, b_idx = np.nonzero(upper & (dist <= near_bits))
            for a, b in zip(a_idx.tolist(), b_idx.tolist(), strict=True):
                ka, kb = int(okr[i0 + a]), int(okr[i0 + b])
                if exact_id[ka] >= 0 and exact_id[ka] == exact_id[kb]:
                    continue  # identical files: counted as exact duplicates
                found.append((int(dist[a, b]), ka, kb))
        for _, ka, kb in found:
            key = _pair_key(split_of[ka], split_of[kb])
            rep.near_pairs[key] = rep.near_pairs.get(key, 0) + 1
        found.sort(key=lambda t: (split_of[t[1]] == split_of[t[2]], t[0], ids[t[1]]))
        rep.near_examples = [[d, split_of[a], ids[a], split_of[b], ids[b]] for d, a, b in found[:MAX_EXAMPLES]]
    order = {n: i for i, n in enumerate(SPLIT_NAMES)}

    def sort_key(k: str) -> tuple:
        return tuple(order.get(x, 99) for x in k.split("/"))

    rep.exact_pairs = dict(sorted(rep.exact_pairs.items(), key=lambda kv: sort_key(kv[0])))
    rep.near_pairs = dict(sorted(rep.near_pairs.items(), key=lambda kv: sort_key(kv[0])))
    return rep


def audit_splits(table: SampleTable, splits: Splits | dict[str, np.ndarray], method: str = "", duplicates: bool = False,
                 near_bits: int = NEAR_DUPLICATE_BITS) -> AuditReport:
    """Audit given splits of a table: groups in two splits and, with ``duplicates``, duplicated images.

    Args:
        table: the dataset.
        splits: the splits (row indices).
        method: how they were made, for the report.
        duplicates: also look for exact and near-duplicate images (:func:`find_duplicates`; reads every image).
        near_bits: the near-duplicate threshold (see :data:`NEAR_DUPLICATE_BITS`).

    Raises:
        ValueError: the dataset has no group ids and ``duplicates`` is off (there would be nothing to audit).

    Example:
        >>> report = audit_splits(table, splits, duplicates=True)  # doctest: +SKIP
        >>> report.ok  # doctest: +SKIP
        True
    """
    has_groups = table.groups is not None and any(g is not None for g in table.groups)
    if not has_groups and not duplicates:
        raise ValueError(
            f"{table.source}: the dataset has no group ids (patient/examination), so leakage cannot be audited; "
            "set the source's group column (e.g. data.group_column for csv, data.group_pattern for folders)"
        )
    parts = splits.as_dict() if isinstance(splits, Splits) else dict(splits)
    method = method or (splits.method if isinstance(splits, Splits) else "given")
    leaks = find_group_leaks(table, parts)
    pair_counts = {}
    for a, b in combinations([s for s in SPLIT_NAMES if s in parts] + [s for s in parts if s not in SPLIT_NAMES], 2):
        pair_counts[f"{a}/{b}"] = sum(1 for v in leaks.values() if a in v and b in v)
    images: dict[str, dict[str, int]] = {g: {} for g in leaks}
    for name, rows in parts.items():
        if not leaks:
            break
        gs = table.groups[rows]
        for g in leaks:
            n = int(np.sum(gs == g))
            if n:
                images[g][name] = n
    return AuditReport(
        source=table.source, method=method,
        sizes={k: int(len(v)) for k, v in parts.items()},
        groups_per_split={k: (len({g for g in table.groups[v].tolist() if g is not None}) if has_groups else 0)
                          for k, v in parts.items()},
        leaks=leaks, pair_counts=pair_counts, images=images,
        duplicates=find_duplicates(table, parts, near_bits) if duplicates else None,
        groups_audited=has_groups,
    )


def audit_config(cfg, duplicates: bool = True, near_bits: int = NEAR_DUPLICATE_BITS) -> AuditReport:
    """Read the dataset of a run config, split it as training would, and audit the splits.

    Args:
        cfg: a run config.
        duplicates: also look for exact and near-duplicate images within and across splits (reads every image:
            about 2 ms an image for 224 px JPEGs on one core).
        near_bits: the near-duplicate threshold (see :data:`NEAR_DUPLICATE_BITS`).

    Example:
        >>> audit_config(load_config("configs/nih.yaml")).ok  # doctest: +SKIP
        False
    """
    from medlens.data.readers import read_dataset

    table = read_dataset(cfg.data)
    s = cfg.data.split
    splits = split_indices(table, s.method, s.val_fraction, s.test_fraction, s.seed, allow_group_leakage=True)
    return audit_splits(table, splits, duplicates=duplicates, near_bits=near_bits)
