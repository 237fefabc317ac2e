"""``kind: csv`` -- an image path column plus labels in one delimited column or one 0/1/blank column each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medlens.data.labels import LabelError, LabelSpace, encode_multi, encode_single
from medlens.data.readers import READERS
from medlens.data.readers._common import check_images_exist, resolve_image, restrict_labels
from medlens.data.samples import SampleTable
from medlens.data.splits import normalize_split_name

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}
_UNKNOWN = {"", "nan", "na", "n/a", "-1", "-1.0", "unknown", "?"}


def read_table_file(path: Path) -> pd.DataFrame:
    """Read a CSV (optionally .gz) as strings, blanks kept as ''."""
    if not path.is_file():
        raise FileNotFoundError(f"data.path: CSV file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the CSV file is empty (expected a header row, then one row per image)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse CSV ({e})") from None


def _names_seen(found: set[str], label_names: list[str] | None) -> list[str]:
    """Every label the rows name (sorted) plus requested ones they do not: the columns before filtering."""
    names = sorted(found)
    return names + [x for x in (label_names or []) if x not in found]


def _require(df: pd.DataFrame, col: str, field: str, path: Path) -> None:
    if col not in df.columns:
        raise KeyError(f"{path}: column {col!r} (data.{field}) not found; columns are {list(df.columns)}")


@READERS.register("csv")
def read_csv(cfg) -> SampleTable:
    """Read a labels CSV.

    Rows are reported 1-based as in a spreadsheet, counting the header as row 1.
    """
    path = Path(cfg.path)
    df = read_table_file(path)
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    _require(df, cfg.image_column, "image_column", path)
    if bool(cfg.label_column) == bool(cfg.label_columns):
        raise ValueError(f"{path}: set exactly one of data.label_column or data.label_columns")
    rows = np.arange(len(df)) + 2  # spreadsheet row numbers
    if len(df) == 0:
        raise ValueError(f"{path}: the CSV has no rows")
    where = [f"row {r}" for r in rows]
    if cfg.label_columns:
        for c in cfg.label_columns:
            _require(df, c, "label_columns", path)
        absent = [x for x in cfg.label_names or [] if x not in cfg.label_columns]
        if absent:
            raise LabelError(f"{path}: data.label_names {absent} are not among data.label_columns {cfg.label_columns}")
        cols = list(cfg.label_columns)
        task = cfg.task or "multilabel"
        targets = np.full((len(df), len(cols)), np.nan, dtype=np.float32)
        for j, name in enumerate(cols):
            col = df[name].str.strip().str.lower()
            for i, v in enumerate(col):
                if v in _TRUE:
                    targets[i, j] = 1.0
                elif v in _FALSE:
                    targets[i, j] = 0.0
                elif v not in _UNKNOWN:
                    raise LabelError(f"{path}: row {rows[i]}, column {name!r}: value {df[name].iloc[i]!r} is not 0, 1 or blank")
        if cfg.unknown_labels == "negative":
            targets = np.nan_to_num(targets, nan=0.0)
        if task in ("binary", "multiclass"):
            bad = np.where(np.nansum(targets, axis=1) > 1)[0]
            if len(bad):
                raise LabelError(f"{path}: row {rows[bad[0]]} has more than one class set for a {task} task")
            # one class set: the others are 0 even when blank; none set while some are 0: no class -> error
            ones = np.nansum(targets, axis=1) == 1
            targets[ones] = np.nan_to_num(targets[ones], nan=0.0)
            none = np.where(~ones & (np.nansum(targets == 0, axis=1) > 0))[0]
            if len(none):
                raise LabelError(f"{path}: row {rows[none[0]]} has no class set (one of {cols} must be 1 for a {task} task)")
        space, targets, label_keep = restrict_labels(targets, cols, cfg.label_names, task=cfg.task, multi=True, source=str(path), where=where)
    else:
        _require(df, cfg.label_column, "label_column", path)
        raw = df[cfg.label_column].astype(str).str.strip()
        delim = cfg.label_delimiter
        # a "no finding" value only makes sense for multi-label data, even when no row lists two findings
        multi = cfg.task == "multilabel" or (cfg.task is None and (bool(cfg.no_finding) or raw.str.contains(delim, regex=False).any()))
        if multi:
            lists = [
                None if v == "" else [] if (cfg.no_finding and v == cfg.no_finding) else [x.strip() for x in v.split(delim) if x.strip()]
                for v in raw
            ]
            names = _names_seen({x for lst in lists if lst for x in lst}, cfg.label_names)
            seen = LabelSpace(tuple(names), "multilabel")
            targets = np.stack([encode_multi(lst, seen, where=f"{path}: row {r}: ") for lst, r in zip(lists, rows, strict=True)])
        else:
            names = _names_seen({v for v in raw if v != ""}, cfg.label_names)
            seen = LabelSpace(tuple(names), "multiclass")
            targets = np.stack([encode_single(v, seen, f"{path}: row {r}: ") for v, r in zip(raw, rows, strict=True)])
        space, targets, label_keep = restrict_labels(targets, names, cfg.label_names, task=cfg.task, multi=multi, source=str(path), where=where)
        if multi and cfg.unknown_labels == "negative":
            targets = np.nan_to_num(targets, nan=0.0)
    paths = [resolve_image(root, p.strip()) for p in df[cfg.image_column]]
    empty = [i for i, p in enumerate(df[cfg.image_column]) if not p.strip()]
    if empty:
        raise ValueError(f"{path}: row {rows[empty[0]]}: column {cfg.image_column!r} is empty")
    groups = None
    if cfg.group_column:
        _require(df, cfg.group_column, "group_column", path)
        groups = [g.strip() or None for g in df[cfg.group_column]]
    splits = None
    if cfg.split_column:
        _require(df, cfg.split_column, "split_column", path)
        splits = [normalize_split_name(s, f"{path}: row {r}: ") for s, r in zip(df[cfg.split_column], rows, strict=True)]
    meta_cols = list(dict.fromkeys([*cfg.metadata_columns, *((cfg.metadata.numeric + cfg.metadata.categorical) if cfg.metadata else [])]))
    for c in meta_cols:
        _require(df, c, "metadata_columns", path)
    metadata = df[meta_cols].replace({"": None}) if meta_cols else None
    names_only = [Path(p.strip()).name for p in df[cfg.image_column]]
    ids = names_only if len(set(names_only)) == len(names_only) else [p.strip() for p in df[cfg.image_column]]
    texts = None
    if cfg.text_column:  # kept with the row, never read as a label
        _require(df, cfg.text_column, "text_column", path)
        texts = [t if t.strip() else None for t in df[cfg.text_column]]
    table = SampleTable(space, ids, paths, targets, groups, splits, metadata, source=str(path), texts=texts,
                        text_column=cfg.text_column)
    if not label_keep.all():  # single-label rows whose class is outside data.label_names
        table = table.subset(np.where(label_keep)[0])
        rows = rows[label_keep]
    keep = check_images_exist(table.images.tolist(), rows, cfg.on_bad_image, str(path))
    if not keep.all():
        table = table.subset(np.where(keep)[0])
    table.check_nonempty_classes()
    return table
