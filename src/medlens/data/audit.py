"""Split leakage audit (``medlens split audit CONFIG``): every group (patient/exam) found in more than one split.

The audit reads the dataset and makes the splits exactly as training would (same config, same seed), but
does not stop at the first leak: it lists them all, with how many images each leaking group has in each
split. Training itself refuses leaking splits unless ``data.split.allow_group_leakage: true``.

Example:
    >>> from medlens.config import load_config
    >>> report = audit_config(load_config("configs/nih.yaml"))  # doctest: +SKIP
    >>> report.pair_counts  # doctest: +SKIP
    {'train/val': 15, 'train/test': 8, 'val/test': 9}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from medlens.data.samples import SampleTable
from medlens.data.splits import SPLIT_NAMES, Splits, find_group_leaks, split_indices


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
    """

    source: str
    method: str
    sizes: dict[str, int]
    groups_per_split: dict[str, int]
    leaks: dict[str, list[str]] = field(default_factory=dict)
    pair_counts: dict[str, int] = field(default_factory=dict)
    images: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no group appears in two splits."""
        return not self.leaks

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "num_leaking_groups": len(self.leaks)}

    def to_text(self, max_groups: int = 50) -> str:
        """A human-readable report."""
        lines = [f"split audit of {self.source} ({self.method} split)"]
        lines.append("  " + ", ".join(f"{k}: {self.sizes[k]} images / {self.groups_per_split.get(k, 0)} groups" for k in self.sizes))
        if self.ok:
            lines.append("no group appears in more than one split")
            return "\n".join(lines)
        lines.append(f"{len(self.leaks)} groups appear in more than one split:")
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in self.pair_counts.items()))
        for g, parts in list(self.leaks.items())[:max_groups]:
            lines.append(f"  {g}: " + ", ".join(f"{s} ({self.images[g][s]} images)" for s in parts))
        if len(self.leaks) > max_groups:
            lines.append(f"  ... and {len(self.leaks) - max_groups} more")
        return "\n".join(lines)


def audit_splits(table: SampleTable, splits: Splits | dict[str, np.ndarray], method: str = "") -> AuditReport:
    """Audit given splits of a table.

    Example:
        >>> report = audit_splits(table, splits)  # doctest: +SKIP
        >>> report.ok  # doctest: +SKIP
        True
    """
    if table.groups is None:
        raise ValueError(
            f"{table.source}: the dataset has no group ids (patient/examination), so leakage cannot be audited; "
            "set the source's group column (e.g. data.group_column for csv)"
        )
    parts = splits.as_dict() if isinstance(splits, Splits) else dict(splits)
    method = method or (splits.method if isinstance(splits, Splits) else "given")
    leaks = find_group_leaks(table, parts)
    pair_counts = {}
    for a, b in combinations([s for s in SPLIT_NAMES if s in parts] + [s for s in parts if s not in SPLIT_NAMES], 2):
        pair_counts[f"{a}/{b}"] = sum(1 for v in leaks.values() if a in v and b in v)
    images: dict[str, dict[str, int]] = {g: {} for g in leaks}
    for name, rows in parts.items():
        gs = table.groups[rows]
        for g in leaks:
            n = int(np.sum(gs == g))
            if n:
                images[g][name] = n
    return AuditReport(
        source=table.source, method=method,
        sizes={k: int(len(v)) for k, v in parts.items()},
        groups_per_split={k: len({g for g in table.groups[v].tolist() if g is not None}) for k, v in parts.items()},
        leaks=leaks, pair_counts=pair_counts, images=images,
    )


def audit_config(cfg) -> AuditReport:
    """Read the dataset of a run config, split it as training would, and audit the splits.

    Example:
        >>> audit_config(load_config("configs/nih.yaml")).ok  # doctest: +SKIP
        False
    """
    from medlens.data.readers import read_dataset

    table = read_dataset(cfg.data)
    s = cfg.data.split
    splits = split_indices(table, s.method, s.val_fraction, s.test_fraction, s.seed, allow_group_leakage=True)
    return audit_splits(table, splits)
