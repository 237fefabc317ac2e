"""``kind: hf`` -- Hugging Face ``datasets``: local parquet / arrow / imagefolder, or a hub name when online.

* ``format: auto`` picks by what ``path`` is: a ``save_to_disk`` folder (arrow), ``.arrow`` file, ``.parquet``
  file or a folder of them (parquet, splits from the file names such as ``train-00000-of-00001.parquet``),
  a folder of class sub-folders (imagefolder), and otherwise a hub name (``user/dataset``; needs network).
* ``image_column`` holds an ``Image`` feature (a file path, or embedded bytes) or a string path relative to the
  dataset folder. Embedded bytes are written once to ``cache_dir`` (default ``~/.cache/medlens/hf``) so
  training reads files lazily like every other source.
* ``label_column`` may be a ``ClassLabel`` (its names are the label names), a string, an integer (indices into
  ``label_names``), or a list of those (multi-label). A ``ClassLabel`` of -1 or a null is unknown.
* Split names map through ``split_map`` (``{validation: val}``) or the usual spellings.
* ``text_column``: a string column of free text (a radiology report) kept with each row, carried to the predictions
  and reports, never a label.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlens.data.labels import LabelError
from medlens.data.readers import READERS
from medlens.data.readers._common import check_images_exist, restrict_labels
from medlens.data.samples import SampleTable
from medlens.data.splits import normalize_split_name

log = logging.getLogger("medlens.data")
_CHUNK = 1000  # rows per batch when iterating a dataset


def resolve_format(path: str, fmt: str = "auto") -> str:
    """Which loader a ``path`` needs: arrow, parquet, imagefolder or hub.

    Example:
        >>> resolve_format("someone/chest-xrays")
        'hub'
    """
    if fmt != "auto":
        return fmt
    p = Path(path)
    if p.is_file():
        suf = p.suffix.lower()
        if suf == ".parquet":
            return "parquet"
        if suf == ".arrow":
            return "arrow"
        raise ValueError(f"data.path: {p} is neither a .parquet nor an .arrow file; set data.format")
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "arrow"
        if any(p.rglob("*.parquet")):
            return "parquet"
        if any(p.rglob("*.arrow")):
            return "arrow"
        return "imagefolder"
    if p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"data.path: dataset not found: {path}")
    return "hub"


def load_hf(path: str, fmt: str):
    """A ``Dataset`` or ``DatasetDict`` for a local path or a hub name."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - hf extra missing
        raise ImportError("kind: hf needs the datasets package: pip install 'medlens[hf]'") from e
    p = Path(path)
    try:
        if fmt == "arrow":
            if p.is_file():
                return datasets.Dataset.from_file(str(p))
            if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
                return datasets.load_from_disk(str(p))
            return datasets.load_dataset("arrow", data_dir=str(p))
        if fmt == "parquet":
            if p.is_file():
                return datasets.Dataset.from_parquet(str(p))
            return datasets.load_dataset("parquet", data_dir=str(p))
        if fmt == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=str(p))
        return datasets.load_dataset(path)  # hub
    except FileNotFoundError:
        raise
    except (ConnectionError, OSError) as e:
        if fmt == "hub":
            raise FileNotFoundError(f"data.path: {path!r} is not a local dataset and the hub could not be reached ({e})") from None
        raise ValueError(f"data.path: cannot load {path} as {fmt} ({e})") from None
    except Exception as e:  # datasets raises DatasetNotFoundError, ValueError, ...
        raise ValueError(f"data.path: cannot load {path!r} as {fmt} ({type(e).__name__}: {e})") from None


def _label_kind(feature) -> tuple[str, list[str] | None, bool]:
    """(value type, ClassLabel names or None, is_list) for a label feature."""
    import datasets

    inner, is_list = feature, False
    list_types = tuple(t for t in (getattr(datasets, "Sequence", None), getattr(datasets.features, "List", None), getattr(datasets, "LargeList", None)) if t is not None)
    if isinstance(feature, list_types):
        inner, is_list = feature.feature, True
    elif isinstance(feature, list) and feature:
        inner, is_list = feature[0], True
    if isinstance(inner, datasets.ClassLabel):
        return "classlabel", list(inner.names), is_list
    dtype = getattr(inner, "dtype", "string")
    if dtype in ("string", "large_string"):
        return "string", None, is_list
    if "int" in str(dtype):
        return "int", None, is_list
    if dtype == "bool":
        return "bool", None, is_list
    raise LabelError(f"label column has an unsupported type {inner}")


def _ext_of(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return ".dcm"
    return ".img"


def _write_once(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cache_root(cfg) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    base = os.environ.get("MEDLENS_CACHE_DIR")
    return Path(base) / "hf" if base else Path.home() / ".cache" / "medlens" / "hf"


@READERS.register("hf")
def read_hf(cfg) -> SampleTable:
    """Read a Hugging Face dataset (all its splits) into one :class:`SampleTable`."""
    import datasets

    fmt = resolve_format(cfg.path, cfg.format)
    obj = load_hf(cfg.path, fmt)
    parts = list(obj.items()) if isinstance(obj, datasets.DatasetDict) else [(None, obj)]
    src = f"{cfg.path} ({fmt})"
    base = Path(cfg.path) if Path(cfg.path).is_dir() else Path(cfg.path).parent
    first = parts[0][1]
    for col, field in ((cfg.image_column, "image_column"), (cfg.label_column, "label_column")):
        if col not in first.column_names:
            raise KeyError(f"{src}: column {col!r} (data.{field}) not found; columns are {first.column_names}")
    kind, class_names, multi = _label_kind(first.features[cfg.label_column])
    if kind == "int" and not class_names and cfg.label_names:
        class_names = list(cfg.label_names)
    meta_cols = list(dict.fromkeys([*cfg.metadata_columns, *((cfg.metadata.numeric + cfg.metadata.categorical) if cfg.metadata else [])]))
    for c in [*meta_cols, *([cfg.group_column] if cfg.group_column else [])]:
        if c not in first.column_names:
            raise KeyError(f"{src}: column {c!r} not found; columns are {first.column_names}")
    if cfg.text_column and cfg.text_column not in first.column_names:
        raise KeyError(f"{src}: column {cfg.text_column!r} (data.text_column) not found; columns are {first.column_names}")
    ids: list[str] = []
    images: list[str] = []
    raw_labels: list[Any] = []
    groups: list[str | None] = []
    splits: list[str | None] = []
    meta: dict[str, list[Any]] = {c: [] for c in meta_cols}
    texts: list[str | None] = []  # data.text_column: free text per row, never a label
    cache: Path | None = None
    for split_name, ds in parts:
        split = None
        if split_name is not None:
            mapped = cfg.split_map.get(split_name, split_name)
            split = normalize_split_name(mapped, f"{src}: split {split_name!r} (map it with data.split_map): ")
        img_feature = ds.features[cfg.image_column]
        if isinstance(img_feature, datasets.Image):
            ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
        cols = [cfg.image_column, cfg.label_column, *meta_cols, *([cfg.group_column] if cfg.group_column else []),
                *([cfg.text_column] if cfg.text_column else [])]
        fp = getattr(ds, "_fingerprint", None) or hashlib.sha1(f"{cfg.path}:{split_name}:{len(ds)}".encode()).hexdigest()
        row = 0
        for batch in ds.select_columns(list(dict.fromkeys(cols))).iter(batch_size=_CHUNK):
            for i, img in enumerate(batch[cfg.image_column]):
                n = row + i
                rid = f"{split_name}/{n}" if split_name is not None else str(n)
                if isinstance(img, dict):
                    p, data = img.get("path"), img.get("bytes")
                    if data:
                        if cache is None:
                            cache = _cache_root(cfg)
                        name = Path(p).name if p else ""
                        target = cache / fp / (f"{n}_{name}" if name else f"{n}{_ext_of(data)}")
                        _write_once(target, data)
                        images.append(str(target))
                    elif p:
                        images.append(p if Path(p).is_absolute() else str(base / p))
                    else:
                        raise ValueError(f"{src}: row {rid}: image column {cfg.image_column!r} is empty")
                    if p:
                        rid = f"{split_name}/{Path(p).name}" if split_name is not None else Path(p).name
                elif isinstance(img, str) and img:
                    images.append(img if Path(img).is_absolute() else str(base / img))
                    rid = img
                else:
                    raise ValueError(f"{src}: row {rid}: column {cfg.image_column!r} must hold an image or a path, got {type(img).__name__}")
                ids.append(rid)
                splits.append(split)
            raw_labels.extend(batch[cfg.label_column])
            if cfg.group_column:
                groups.extend(None if g is None else str(g) for g in batch[cfg.group_column])
            for c in meta_cols:
                meta[c].extend(batch[c])
            if cfg.text_column:
                for i, t in enumerate(batch[cfg.text_column]):
                    if t is not None and not isinstance(t, str):
                        raise ValueError(f"{src}: row {row + i}: column {cfg.text_column!r} (data.text_column) must be text, "
                                         f"got {type(t).__name__}")
                    texts.append(t if t and t.strip() else None)
            row += len(batch[cfg.image_column])
    if cache is not None:
        log.info("%s: embedded images written once to %s", src, cache)
    if not ids:
        raise ValueError(f"{src}: the dataset has no rows")

    def names_of(v: Any) -> list[str] | None:
        if v is None:
            return None
        vals = v if multi else [v]
        out = []
        for x in vals:
            if x is None or (kind in ("classlabel", "int") and int(x) < 0):
                return None if not multi else out
            if kind in ("classlabel", "int") and class_names is not None:
                if int(x) >= len(class_names):
                    raise LabelError(f"{src}: label index {x} is out of range for {class_names}")
                out.append(class_names[int(x)])
            else:
                out.append(str(x))
        return out

    lists = [names_of(v) for v in raw_labels]
    found = {x for lst in lists if lst for x in lst}
    names = list(class_names) if class_names is not None else sorted(found)  # a ClassLabel's order is the label order
    names += [x for x in sorted(found) + list(cfg.label_names or []) if x not in names]
    names = list(dict.fromkeys(names))
    col = {n: j for j, n in enumerate(names)}
    targets = np.full((len(ids), len(names)), np.nan, dtype=np.float32)
    for i, lst in enumerate(lists):
        if lst is None or (not multi and not lst):
            continue
        targets[i] = 0.0
        for x in lst:
            targets[i, col[x]] = 1.0
    space, targets, label_keep = restrict_labels(targets, names, cfg.label_names, task=cfg.task, multi=multi, source=src, where=[f"row {i}" for i in ids])
    if cfg.unknown_labels == "negative":
        targets = np.nan_to_num(targets, nan=0.0)
    table = SampleTable(
        space, ids, images, targets,
        groups if cfg.group_column else None,
        splits if any(s is not None for s in splits) else None,
        pd.DataFrame(meta) if meta_cols else None, source=src,
        texts=texts if cfg.text_column else None, text_column=cfg.text_column,
    )
    if not label_keep.all():  # single-label rows whose class is outside data.label_names
        table = table.subset(np.where(label_keep)[0])
    keep = check_images_exist(table.images.tolist(), table.ids.tolist(), cfg.on_bad_image, src)
    if not keep.all():
        table = table.subset(np.where(keep)[0])
    table.check_nonempty_classes()
    return table
