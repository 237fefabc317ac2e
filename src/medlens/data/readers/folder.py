"""``kind: folder`` -- one sub-folder per class, optionally below train/val/test folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medlens.data.labels import LabelSpace, encode_single
from medlens.data.readers import READERS
from medlens.data.readers._common import restrict_labels
from medlens.data.samples import SampleTable
from medlens.data.splits import SPLIT_ALIASES

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".gif", ".webp"}


def _images_in(folder: Path) -> list[Path]:
    """Image files below ``folder``; hidden files and folders (``.DS_Store``, macOS ``._x.png``) are skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def groups_from_paths(rel_paths: list[str], pattern: str, source: str = "") -> list[str]:
    """The patient (group) id of each file: the one capturing group of ``pattern`` searched in its relative path.

    Args:
        rel_paths: paths below the folder root, ``/``-separated (``train/PNEUMONIA/person12_virus_40.jpeg``).
        pattern: ``data.group_pattern``, a regular expression with exactly one capturing group.
        source: the folder, for messages.

    Raises:
        ValueError: the pattern has not exactly one group, or a file does not match (the first one is named, with
            how many do not) or matches with an empty id.

    Example:
        >>> groups_from_paths(["train/P/person12_virus_40.jpeg", "test/N/IM-0001-0001.jpeg"], r"/(person\\d+|IM-\\d+)[-_]")
        ['person12', 'IM-0001']
    """
    rx = re.compile(pattern)
    if rx.groups != 1:
        raise ValueError(f"data.group_pattern '{pattern}' must have exactly one capturing group (the patient id), not {rx.groups}")
    out: list[str] = []
    missed: list[str] = []
    for rel in rel_paths:
        m = rx.search(rel)
        if m is None or not m.group(1):
            missed.append(rel)
        else:
            out.append(m.group(1))
    if missed:
        what = "matches none of the" if len(missed) == len(rel_paths) else f"does not match {len(missed)} of the"
        raise ValueError(f"{source}: data.group_pattern '{pattern}' {what} {len(rel_paths)} files, e.g. {missed[0]} "
                         "(it is searched in each path below data.root and must capture a non-empty id)")
    return out


@READERS.register("folder")
def read_folder(cfg) -> SampleTable:
    """Read ``root/<class>/*`` or ``root/<split>/<class>/*``.

    Class names are the folder names (sorted unless ``label_names`` gives the order). An empty class folder
    is an error naming it. With ``label_names``, images of other class folders are left out, with one warning
    (see :func:`~medlens.data.readers._common.restrict_labels`). ``group_pattern`` takes each image's patient id
    from its path below the root (:func:`groups_from_paths`).
    """
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: folder not found: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise ValueError(f"{root}: no class folders found")
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    layout: list[tuple[str | None, Path]] = []
    if split_dirs and len(split_dirs) == len(subdirs):
        for sd in split_dirs:
            for cd in sorted(p for p in sd.iterdir() if p.is_dir() and not p.name.startswith(".")):
                layout.append((SPLIT_ALIASES[sd.name.lower()], cd))
    else:
        layout = [(None, d) for d in subdirs]
    class_names = sorted({cd.name for _, cd in layout})
    names = class_names + [x for x in cfg.label_names or [] if x not in class_names]
    paths, labels, splits, ids = [], [], [], []
    for split, cd in layout:
        files = _images_in(cd)
        if not files and (not cfg.label_names or cd.name in cfg.label_names):
            raise ValueError(f"{cd}: class folder {cd.name!r} has no images")
        for f in files:
            paths.append(str(f))
            labels.append(cd.name)
            splits.append(split)
            ids.append(f.relative_to(root).as_posix())
    for name in cfg.label_names or class_names:
        if name not in labels:
            raise ValueError(f"{root}: class {name!r} has no images")
    pattern = getattr(cfg, "group_pattern", None)
    groups = groups_from_paths(ids, pattern, str(root)) if pattern else None
    seen = LabelSpace(tuple(names), "multiclass")
    targets = np.stack([encode_single(lab, seen, f"{p}: ") for lab, p in zip(labels, paths, strict=True)])
    space, targets, keep = restrict_labels(targets, names, cfg.label_names, task=cfg.task, multi=False, source=str(root), where=paths)
    table = SampleTable(
        space, ids, paths, targets, groups=groups,
        splits=splits if any(s is not None for s in splits) else None, source=str(root),
    )
    return table if keep.all() else table.subset(np.where(keep)[0])
