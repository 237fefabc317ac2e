"""Readers: one per data source, registered by the config's ``data.kind``.

Each reader is a function ``read(cfg) -> SampleTable``. ``read_dataset(cfg)`` dispatches on ``cfg.kind``;
``list_readers()`` names them.

Every reader applies the same label rules: labels outside ``data.label_names`` are filtered with one warning
per source (:func:`medlens.data.readers._common.restrict_labels`), and ``read_dataset`` drops multi-label labels
that no image is positive for (:func:`~medlens.data.readers._common.drop_labels_without_positives`).
"""

from __future__ import annotations

import importlib

from medlens.data.readers._common import drop_labels_without_positives
from medlens.data.samples import SampleTable
from medlens.registry import Registry

READERS: Registry = Registry("data kind")

# Reader modules register themselves on import; imported lazily so optional dependencies stay optional.
_MODULES = {
    "folder": "medlens.data.readers.folder",
    "csv": "medlens.data.readers.csv",
    "medmnist": "medlens.data.readers.medmnist",
    "synthetic": "medlens.data.readers.synthetic",
    "jsonl": "medlens.data.readers.jsonl",
    "sql": "medlens.data.readers.sql",
    "nih": "medlens.data.readers.nih",
    "hf": "medlens.data.readers.hf",
    "webdataset": "medlens.data.readers.webdataset",
}


def _ensure(kind: str) -> None:
    if kind not in READERS and kind in _MODULES:
        importlib.import_module(_MODULES[kind])


def list_readers() -> list[str]:
    """Names of all data kinds."""
    return sorted(_MODULES)


def read_dataset(cfg) -> SampleTable:
    """Read the dataset a ``data`` config section describes, labelled as the source labels it.

    A task that needs another view of the labels (anomaly: normal vs abnormal) reads through
    :func:`medlens.tasks.read_table`.

    Example:
        >>> table = read_dataset(cfg.data)  # doctest: +SKIP
    """
    _ensure(cfg.kind)
    table = READERS.create(cfg.kind, cfg)
    if cfg.max_samples is not None and len(table) > cfg.max_samples:
        table = table.subset(_head_per_split(table, cfg.max_samples))
    return drop_labels_without_positives(table)  # one rule for every source: labels no image is positive for go


def read_source(cfg) -> SampleTable:
    """One source as its reader returns it (and ``max_samples``), without the dataset-level label clean-up.

    What a reader that merges sources (``kind: nih`` with ``extra_sources``) reads each part with: a label one
    part has no positive for is still a known negative there, so it is dropped, if at all, after the merge.
    """
    _ensure(cfg.kind)
    table = READERS.create(cfg.kind, cfg)
    if cfg.max_samples is not None and len(table) > cfg.max_samples:
        table = table.subset(_head_per_split(table, cfg.max_samples))
    return table


def _head_per_split(table: SampleTable, n: int):
    """About ``n`` evenly spaced rows, keeping each predefined split's share.

    Evenly spaced rather than the first rows: folder and many CSV sources list samples class by class, and
    the first rows would then all be of one class (spacing keeps the class mix). Deterministic.
    """
    import numpy as np

    def spaced(rows: np.ndarray, k: int) -> np.ndarray:
        return rows[np.linspace(0, len(rows) - 1, k).round().astype(np.int64)] if k > 0 else rows[:0]

    if table.splits is None:
        return spaced(np.arange(len(table)), n)
    out = []
    for s in ("train", "val", "test", None):
        rows = np.where(table.splits == s)[0] if s is not None else np.where([x is None for x in table.splits])[0]
        k = int(round(n * len(rows) / len(table)))
        out.append(spaced(rows, min(k, len(rows))))
    return np.sort(np.concatenate(out))
