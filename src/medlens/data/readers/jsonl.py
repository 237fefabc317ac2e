"""``kind: jsonl`` -- one JSON object per line, with a file name and its labels.

Example line (Hyper-Kvasir/Kvasir-Capsule style exports)::

    {"labels": ["polyp", "blood"], "old_examination_id": 25, "old_id": 479228, "filename": "479228.jpg"}

Field names are configurable (``image_field``, ``labels_field``, ``group_field``, ``id_field``, ``split_field``,
``metadata_fields``). ``labels`` may be a list (multi-label: listed = positive, others negative) or a single
string (binary/multiclass); ``null`` or a missing field means the row is not annotated (unknown). The
examination id is the default group, so images of one examination never land in two splits. A malformed line
is an error naming its line number. The file is read line by line (``.jsonl.gz`` too), straight into columns.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlens.data.labels import LabelError, infer_task
from medlens.data.readers import READERS
from medlens.data.readers._common import resolve_image, restrict_labels
from medlens.data.samples import SampleTable
from medlens.data.splits import normalize_split_name

_MISSING = object()
log = logging.getLogger("medlens.data")


def _check_images(paths: list[str], lines: list[int], on_bad: str, path: Path) -> np.ndarray:
    """Keep-mask of rows whose image exists; the first missing one raises unless ``on_bad == 'skip'``."""
    keep = np.ones(len(paths), dtype=bool)
    missing = []
    for i, p in enumerate(paths):
        if not os.path.exists(p):
            if on_bad == "error":
                raise FileNotFoundError(f"{path}: line {lines[i]}: image file not found: {p}")
            keep[i] = False
            missing.append(f"line {lines[i]}: {p}")
    if missing:
        log.warning("%s: skipped %d rows whose image is missing: %s", path, len(missing), missing[:20])
    return keep


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line raises naming its number.

    Example:
        >>> for lineno, obj in iter_jsonl(Path("labels.jsonl")):  # doctest: +SKIP
        ...     print(lineno, obj["filename"])
    """
    if not path.is_file():
        raise FileNotFoundError(f"data.path: JSONL file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="strict") as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):  # noqa: B007 - lineno is used after the loop on errors
                text = line.strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: line {lineno + 1}: not UTF-8 text ({e.reason})") from None
        except (gzip.BadGzipFile, EOFError) as e:
            raise ValueError(f"{path}: not a readable gzip file ({e})") from None


def _labels_of(value: Any, lineno: int, path: Path, field: str) -> tuple[list[str] | str | None, bool]:
    """(labels, is_list) for one row's label field."""
    if value is _MISSING or value is None:
        return None, False
    if isinstance(value, list):
        out = []
        for x in value:
            if not isinstance(x, str | int) or isinstance(x, bool):
                raise LabelError(f"{path}: line {lineno}: field {field!r} holds {x!r}; labels must be strings")
            out.append(str(x).strip())
        return [x for x in out if x], True
    if isinstance(value, str | int) and not isinstance(value, bool):
        s = str(value).strip()
        return (s or None), False
    raise LabelError(f"{path}: line {lineno}: field {field!r} must be a list of labels or one label, got {value!r}")


@READERS.register("jsonl")
def read_jsonl(cfg) -> SampleTable:
    """Read a JSONL label file into a :class:`SampleTable`.

    Lines are reported 1-based. Labels outside ``label_names`` (when it is given) are filtered, with one warning
    (see :func:`~medlens.data.readers._common.restrict_labels`); missing images are errors, or skipped and listed
    with ``on_bad_image: skip``.
    """
    path = Path(cfg.path)
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    group_explicit = "group_field" in cfg.model_fields_set
    lines: list[int] = []
    images: list[str] = []
    ids: list[str] = []
    labels: list[list[str] | str | None] = []
    groups: list[str | None] = []
    splits: list[str | None] = []
    meta: dict[str, list[Any]] = {k: [] for k in dict.fromkeys([*cfg.metadata_fields, *((cfg.metadata.numeric + cfg.metadata.categorical) if cfg.metadata else [])])}
    texts: list[str | None] = []  # data.text_column: free text per row, never a label
    any_list = any_single = False
    has_group = False
    for lineno, obj in iter_jsonl(path):
        img = obj.get(cfg.image_field)
        if not isinstance(img, str | int) or isinstance(img, bool) or str(img).strip() == "":
            raise ValueError(f"{path}: line {lineno}: field {cfg.image_field!r} (data.image_field) is missing or empty")
        img = str(img).strip()
        labs, is_list = _labels_of(obj.get(cfg.labels_field, _MISSING), lineno, path, cfg.labels_field)
        any_list |= is_list
        any_single |= labs is not None and not is_list
        lines.append(lineno)
        images.append(resolve_image(root, img))
        ids.append(str(obj[cfg.id_field]) if cfg.id_field and obj.get(cfg.id_field) is not None else img)
        labels.append(labs)
        if cfg.group_field:
            g = obj.get(cfg.group_field)
            has_group |= g is not None
            groups.append(None if g is None else str(g))
        if cfg.split_field:
            splits.append(normalize_split_name(obj.get(cfg.split_field), f"{path}: line {lineno}: "))
        for k in meta:
            meta[k].append(obj.get(k))
        if cfg.text_column:
            t = obj.get(cfg.text_column)
            if t is not None and not isinstance(t, str):
                raise ValueError(f"{path}: line {lineno}: field {cfg.text_column!r} (data.text_column) must be text, got {type(t).__name__}")
            texts.append(t if t and t.strip() else None)
    if not lines:
        raise ValueError(f"{path}: the JSONL file has no rows (expected one JSON object per line)")
    if any_list and any_single:
        raise LabelError(f"{path}: field {cfg.labels_field!r} is a list on some lines and a single label on others")
    if cfg.group_field and group_explicit and not has_group:
        raise KeyError(f"{path}: no line has the field {cfg.group_field!r} (data.group_field)")
    multi = any_list or cfg.task == "multilabel"
    found = {x for lab in labels if lab is not None for x in ([lab] if isinstance(lab, str) else lab)}
    names = sorted(found) + [x for x in cfg.label_names or [] if x not in found]  # columns before filtering
    col = {n: j for j, n in enumerate(names)}
    task = cfg.task or infer_task(cfg.label_names or names, multi)
    single = task in ("binary", "multiclass")
    targets = np.full((len(lines), len(names)), np.nan, dtype=np.float32)
    for i, (lab, ln) in enumerate(zip(labels, lines, strict=True)):
        if lab is None:
            continue  # not annotated: unknown
        present = [lab] if isinstance(lab, str) else lab
        targets[i] = 0.0
        for x in present:
            targets[i, col[x]] = 1.0
        if single and len(present) > 1:
            raise LabelError(f"{path}: line {ln}: {len(present)} labels for a {task} task")
    space, targets, label_keep = restrict_labels(
        targets, names, cfg.label_names, task=cfg.task, multi=multi, source=str(path), where=[f"line {ln}" for ln in lines],
    )
    if cfg.unknown_labels == "negative":
        targets = np.nan_to_num(targets, nan=0.0)
    metadata = pd.DataFrame(meta) if meta else None
    table = SampleTable(
        space, ids, images, targets,
        groups if (cfg.group_field and has_group) else None,
        splits if (cfg.split_field and any(s is not None for s in splits)) else None,
        metadata, source=str(path), texts=texts if cfg.text_column else None, text_column=cfg.text_column,
    )
    if not label_keep.all():  # single-label rows whose class is outside data.label_names
        table = table.subset(np.where(label_keep)[0])
        lines = [ln for ln, k in zip(lines, label_keep, strict=True) if k]
    keep = _check_images(table.images.tolist(), lines, cfg.on_bad_image, path)
    if not keep.all():
        table = table.subset(np.where(keep)[0])
    table.check_nonempty_classes()
    return table
