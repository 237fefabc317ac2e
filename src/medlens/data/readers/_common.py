"""Helpers shared by readers: label spaces, path checks, bad-file handling."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlens.data.labels import LabelError, LabelSpace, infer_task

log = logging.getLogger("medlens.data")


def make_label_space(found: Sequence[str], cfg, multi: bool, source: str) -> LabelSpace:
    """The label space from the config's ``label_names`` (checked against what the source holds) or inferred."""
    found_sorted = sorted(set(found))
    if cfg.label_names:
        names = tuple(cfg.label_names)
        extra = [x for x in found_sorted if x not in names]
        if extra:
            raise LabelError(f"{source}: label {extra[0]!r} is not in data.label_names {list(names)}")
    else:
        names = tuple(found_sorted)
    task = cfg.task or infer_task(names, multi)
    return LabelSpace(names, task)


def resolve_image(root: Path, rel: str) -> str:
    p = Path(rel)
    return str(p if p.is_absolute() else root / p)


def check_images_exist(paths: Sequence[str], rows: Sequence[int], on_bad: str, source: str) -> np.ndarray:
    """Keep-mask of rows whose image file exists; raise on the first missing one unless ``on_bad == 'skip'``."""
    keep = np.ones(len(paths), dtype=bool)
    missing = []
    for i, p in enumerate(paths):
        if not os.path.exists(p):
            if on_bad == "error":
                raise FileNotFoundError(f"{source}: row {rows[i]}: image file not found: {p}")
            keep[i] = False
            missing.append(p)
    if missing:
        log.warning("%s: skipped %d rows whose image is missing, e.g. %s", source, len(missing), missing[:3])
    return keep
