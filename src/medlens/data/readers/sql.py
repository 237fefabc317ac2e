"""``kind: sql`` -- images and annotations in a SQL database (schema: :mod:`medlens.data.db`).

The config picks a dataset, a label set and its version (the newest by default). An annotation row is a true
or false value; a missing row is unknown (NaN), or negative with ``unknown_labels: negative``. ``label_names``
picks and orders labels of the label set; the others are filtered like in every reader (one warning). Multi-label
labels with no positive image are dropped by :func:`medlens.data.readers.read_dataset`, as for every source.
Rows are streamed in chunks of ``chunk_size``, straight into columns.

Example YAML::

    data:
      kind: sql
      url: postgresql+psycopg://medlens@db.example.org/pacs   # password from $MEDLENS_DB_PASSWORD
      dataset: nih1000
      label_set: nih14
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medlens.data.db import (
    connect,
    find_dataset,
    find_label_set,
    read_annotations,
    read_images,
    read_mapped,
    safe_url,
)
from medlens.data.labels import LabelError
from medlens.data.readers import READERS
from medlens.data.readers._common import check_images_exist, restrict_labels
from medlens.data.samples import SampleTable
from medlens.data.splits import normalize_split_name

log = logging.getLogger("medlens.data")


def _image_root(cfg, db_root: str | None, engine) -> Path:
    if cfg.image_root:
        return Path(cfg.image_root)
    if db_root:
        return Path(db_root)
    db = engine.url.database
    if engine.url.drivername.startswith("sqlite") and db and db != ":memory:":
        return Path(db).resolve().parent  # relative paths next to the SQLite file
    return Path.cwd()


@READERS.register("sql")
def read_sql(cfg) -> SampleTable:
    """Read one dataset and label set version from a database into a :class:`SampleTable`."""
    if cfg.schema_ is not None:
        return read_sql_mapped(cfg)
    engine = connect(cfg.url, cfg.password_env, cfg.password_file)
    where = f"{safe_url(engine.url)} dataset {cfg.dataset!r}"
    try:
        with engine.connect() as conn:
            ds_id, db_root = find_dataset(conn, cfg.dataset)
            info = find_label_set(conn, cfg.label_set, cfg.label_set_version)
            meta_keys = list(dict.fromkeys([*cfg.metadata_fields, *((cfg.metadata.numeric + cfg.metadata.categorical) if cfg.metadata else [])]))
            cols = read_images(conn, ds_id, cfg.chunk_size, meta_keys, cfg.group_by)
            targets = read_annotations(conn, ds_id, info, cols.image_ids, cfg.chunk_size)
        root = _image_root(cfg, db_root, engine)
    finally:
        engine.dispose()
    if len(cols.ids) == 0:
        raise ValueError(f"{where}: the dataset has no images")
    names = list(info.label_names)
    if cfg.label_names:  # pick and order labels by name
        missing = [x for x in cfg.label_names if x not in names]
        if missing:
            raise LabelError(f"{where}: label {missing[0]!r} of data.label_names is not in label set {info.name!r} v{info.version} {names}")
    # the label set's task says single- or multi-label; binary vs multiclass follows the labels kept
    multi = info.task not in ("binary", "multiclass")
    space, targets, label_keep = restrict_labels(
        targets, names, cfg.label_names, task=cfg.task or (info.task if multi else None), multi=multi, source=where,
        where=[f"image {i!r}" for i in cols.ids],
    )
    if cfg.unknown_labels == "negative":
        targets = np.nan_to_num(targets, nan=0.0)
    base = str(root)
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in cols.paths]  # os.path: 5x faster than Path
    splits = None
    if any(s is not None for s in cols.splits):
        splits = [normalize_split_name(s, f"{where}, image {i!r}: ") for s, i in zip(cols.splits, cols.ids, strict=True)]
    groups = cols.groups if any(g is not None for g in cols.groups) else None
    metadata = pd.DataFrame({k: v for k, v in cols.meta.items()}) if cols.meta else None
    table = SampleTable(space, cols.ids, paths, targets, groups, splits, metadata, source=where)
    if not label_keep.all():  # single-label rows whose class is outside data.label_names
        table = table.subset(np.where(label_keep)[0])
    keep = check_images_exist(table.images.tolist(), table.ids.tolist(), cfg.on_bad_image, where)
    if not keep.all():
        table = table.subset(np.where(keep)[0])
    table.check_nonempty_classes()
    return table


def read_sql_mapped(cfg) -> SampleTable:
    """``data.schema``: read your own tables (images, annotations, labels, label sets, their link) directly.

    The table's provenance keeps the full label set (id, name, version, every label with its id and original
    index) and the labels used with their original indices; the run's manifest stores it
    (``extra.data_summary.provenance``).
    """
    engine = connect(cfg.url, cfg.password_env, cfg.password_file, require_schema=False)  # your tables, not medlens'
    where = f"{safe_url(engine.url)} label set {cfg.label_set!r}"
    try:
        with engine.connect() as conn:
            d = read_mapped(conn, cfg.schema_, cfg.label_set, cfg.label_set_version, cfg.chunk_size)
        root = _image_root(cfg, None, engine)
    finally:
        engine.dispose()
    flt = cfg.schema_.dataset
    if len(d.ids) == 0 and flt is not None:
        raise ValueError(f"{where}: data.schema.dataset selects no image ({flt.table or cfg.schema_.images.table}."
                         f"{flt.column} = {flt.equals!r})")
    if len(d.ids) == 0:
        raise ValueError(f"{where}: the images table {cfg.schema_.images.table!r} has no rows")
    if flt is not None:
        log.info("%s: data.schema.dataset (%s.%s = %r) selects %d images", where, flt.table or cfg.schema_.images.table,
                 flt.column, flt.equals, len(d.ids))
    names = [lab["name"] for lab in d.label_set["labels"]]
    if cfg.label_names:
        missing = [x for x in cfg.label_names if x not in names]
        if missing:
            raise LabelError(f"{where}: label {missing[0]!r} of data.label_names is not in label set v{d.label_set['version']} {names}")
    space, targets, label_keep = restrict_labels(d.targets, names, cfg.label_names, task=cfg.task, multi=True,
                                                 source=where, where=[f"image {i!r}" for i in d.ids])
    if cfg.unknown_labels == "negative":
        targets = np.nan_to_num(targets, nan=0.0)
    base = str(root)
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in d.paths]
    splits = None
    if any(s is not None for s in d.splits):
        splits = [normalize_split_name(s, f"{where}, image {i!r}: ") for s, i in zip(d.splits, d.ids, strict=True)]
    groups = d.groups if any(g is not None for g in d.groups) else None
    index = {lab["name"]: lab for lab in d.label_set["labels"]}
    provenance = {"label_set": d.label_set, "labels_used": [
        {"name": n, "id": index[n]["id"], "original_index": index[n]["index"]} for n in space.names if n in index],
        **({"dataset_filter": flt.model_dump()} if flt is not None else {})}
    table = SampleTable(space, d.ids, paths, targets, groups, splits, None, source=where, provenance=provenance)
    if not label_keep.all():
        table = table.subset(np.where(label_keep)[0])
    keep = check_images_exist(table.images.tolist(), table.ids.tolist(), cfg.on_bad_image, where)
    if not keep.all():
        table = table.subset(np.where(keep)[0])
    table.check_nonempty_classes()
    return table
