"""``kind: nih`` -- NIH ChestX-ray14 ``Data_Entry_2017*.csv(.gz)`` tables, and label harmonisation across sources.

* ``Finding Labels`` is pipe-separated; ``No Finding`` means every finding is negative; a blank cell is unknown.
  A label outside the NIH 14 (and ``harmonize``) is an error naming the row, unless ``label_names`` is given:
  then every label outside ``label_names`` is filtered from the rows, with one warning per source.
* ``Patient ID`` is the group (no patient lands in two splits), ``Patient Age``/``Patient Gender``/
  ``View Position`` become metadata ``age``/``sex``/``view``.
* Rows are restricted to the images present: the files found under ``image_root`` (searched recursively,
  matched by ``Image Index``), or the ones listed in ``images`` (a text file with one name/path per line, such
  as NIH's ``test_list.txt``, or a CSV with an ``Image Index`` or ``path`` column). A listed image that is
  missing is an error, or a listed skip with ``on_bad_image: skip``.
* When an image sits below a ``train``/``valid``/``test`` folder, that folder is its predefined split.

Label harmonisation maps each source's labels onto one target label list: ``harmonize`` renames source
labels (``{Pleural_Thickening: Pleural thickening}``; a label mapped to ``""`` is dropped) and several source
labels may map onto one target (their OR). A target label a source does not annotate is **unknown (NaN)** for
that source's images, never negative. ``extra_sources`` merges further datasets (each a data config: ``kind``
nih by default, any reader works, plus optional ``name`` and ``harmonize``) into the same table; their ids and
groups are prefixed with the source name so patients of two sources never collide.

Example YAML::

    data:
      kind: nih
      path: Data_Entry_2017_v2020.csv.gz
      image_root: images/
      label_names: [Effusion, Pneumothorax, Pneumonia]
      extra_sources:
        - {name: chexpert, kind: csv, path: chexpert.csv, label_columns: [Pleural Effusion, Pneumothorax],
           harmonize: {Pleural Effusion: Effusion}}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlens.data.labels import LabelError, LabelSpace
from medlens.data.readers import READERS
from medlens.data.readers._common import check_images_exist, log_filtered_labels
from medlens.data.samples import SampleTable
from medlens.data.splits import SPLIT_ALIASES

log = logging.getLogger("medlens.data")

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NO_FINDING = "No Finding"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp"}
_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
_META = {"Patient Age": "age", "Patient Gender": "sex", "View Position": "view"}


# ------------------------------------------------------------------------------------- harmonisation
def harmonize_targets(
    targets: np.ndarray,
    source_names: Sequence[str],
    target_names: Sequence[str],
    mapping: dict[str, str] | None = None,
) -> np.ndarray:
    """Map a source's targets (N, Ks) onto a target label list (N, Kt).

    Args:
        targets: source targets, 1/0/NaN.
        source_names: the labels the source annotates (its columns).
        target_names: the target label list.
        mapping: source label -> target label; unmapped labels keep their name; ``""`` drops a label.

    Returns:
        float32 (N, Kt): the OR of the source labels mapped onto each target label; NaN for target labels the
        source does not annotate (never negative).

    Example:
        >>> t = np.array([[1.0, 0.0]], dtype=np.float32)
        >>> harmonize_targets(t, ["Effusion", "Mass"], ["Effusion", "Pneumonia"]).tolist()
        [[1.0, nan]]
    """
    mapping = mapping or {}
    n = targets.shape[0]
    out = np.full((n, len(target_names)), np.nan, dtype=np.float32)
    col = {name: j for j, name in enumerate(target_names)}
    sources_of: dict[int, list[int]] = {}
    for i, s in enumerate(source_names):
        t = mapping.get(s, s)
        if t and t in col:
            sources_of.setdefault(col[t], []).append(i)
    for j, cols in sources_of.items():
        sub = targets[:, cols]
        known = ~np.isnan(sub)
        anypos = np.any(np.nan_to_num(sub, nan=0.0) > 0.5, axis=1)
        # positive if any source label is positive; negative only if all of them are known and negative
        out[:, j] = np.where(anypos, 1.0, np.where(known.all(axis=1), 0.0, np.nan))
    return out


def mapped_names(source_names: Sequence[str], mapping: dict[str, str] | None) -> list[str]:
    """Target names a source contributes (in first-seen order)."""
    mapping = mapping or {}
    return [t for t in dict.fromkeys(mapping.get(s, s) for s in source_names) if t]


# --------------------------------------------------------------------------------------- NIH tables
def read_data_entry(path: Path) -> pd.DataFrame:
    """Read a ``Data_Entry_2017*.csv`` (or ``.csv.gz``) as strings."""
    if not path.is_file():
        raise FileNotFoundError(f"data.path: NIH Data_Entry file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: cannot parse the NIH Data_Entry table ({e})") from None
    df.columns = [c.strip() for c in df.columns]
    for c in _REQUIRED:
        if c not in df.columns:
            raise KeyError(f"{path}: column {c!r} not found; is this a Data_Entry_2017 file? columns are {list(df.columns)}")
    df["__row"] = np.arange(len(df)) + 2  # spreadsheet row numbers (header = row 1)
    return df


def scan_images(root: Path) -> dict[str, str]:
    """File name -> path relative to ``root`` for every image below it (recursive)."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.image_root: folder not found: {root}")
    found: dict[str, str] = {}
    dupes: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                rel = f if rel_dir == "." else os.path.join(rel_dir, f)
                if f in found:
                    dupes.append(f)
                found[f] = rel
    if dupes:
        raise ValueError(f"{root}: image file names are not unique (e.g. {sorted(set(dupes))[:3]}); NIH images are matched by name")
    return found


def read_listing(path: Path) -> list[str]:
    """Image names/paths from a text listing or a CSV with an ``Image Index`` or ``path`` column."""
    if not path.is_file():
        raise FileNotFoundError(f"data.images: listing not found: {path}")
    if path.suffix.lower() in (".csv", ".gz"):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        for c in ("path", "Image Index", "image", "filename"):
            if c in df.columns:
                return [v.strip() for v in df[c] if v.strip()]
        raise KeyError(f"{path}: listing CSV needs a 'path' or 'Image Index' column; columns are {list(df.columns)}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def match_listing(listed: Sequence[str], index: Sequence[str], found: dict[str, str], listing: str | Path, table: str | Path) -> dict[str, str]:
    """Image name -> path (relative to ``image_root`` or absolute) for every listed image, in O(n).

    Args:
        listed: the listing's entries: bare names (NIH's ``test_list.txt``) or paths.
        index: the Data_Entry table's ``Image Index`` column.
        found: name -> relative path of the images under ``image_root`` (for bare names; may be empty).
        listing: the listing file (named in the warning).
        table: the Data_Entry file (named in the warning).

    Example:
        >>> match_listing(["a.png", "x/b.png"], ["a.png", "b.png"], {"a.png": "imgs/a.png"}, "list.txt", "d.csv")
        {'a.png': 'imgs/a.png', 'b.png': 'x/b.png'}
    """
    rel_of = {Path(x).name: (x if "/" in x else found.get(x, x)) for x in listed}
    known = set(index)  # built once: a membership test per listed name, not a scan of the table
    unknown = [x for x in rel_of if x not in known]
    if unknown:
        log.warning("%s: %d listed images are not in %s, e.g. %s", listing, len(unknown), Path(table).name, unknown[:3])
    return rel_of


def _split_of(rel: str) -> str | None:
    first = Path(rel).parts[0].lower() if len(Path(rel).parts) > 1 else ""
    return SPLIT_ALIASES.get(first)


def _nih_source(cfg, known_extra: Sequence[str] = ()) -> tuple[SampleTable, list[str]]:
    """The primary NIH table over the 14 NIH labels (unharmonised)."""
    path = Path(cfg.path)
    df = read_data_entry(path)
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    if cfg.images:
        listed = read_listing(Path(cfg.images))
        # bare names (NIH's own lists) are found wherever they sit below image_root
        found = scan_images(root) if any("/" not in x for x in listed) and root.is_dir() else {}
        rel_of = match_listing(listed, df["Image Index"].tolist(), found, cfg.images, path)
    else:
        rel_of = scan_images(root)
    sel = df[df["Image Index"].isin(rel_of.keys())]
    if len(sel) == 0:
        raise ValueError(f"{path}: none of its {len(df)} images were found under {root}" + (f" (listing {cfg.images})" if cfg.images else ""))
    if len(sel) < len(df):
        log.info("%s: %d of %d rows have their image present", path.name, len(sel), len(df))
    if sel["Image Index"].duplicated().any():
        dup = sel.loc[sel["Image Index"].duplicated(), "Image Index"].iloc[0]
        raise ValueError(f"{path}: image {dup!r} appears in more than one row")
    names = list(NIH_LABELS)
    allowed = set(names) | set(known_extra)
    any_label = bool(cfg.label_names)  # with data.label_names, labels outside it are filtered (counted), not errors
    rows = sel["__row"].to_numpy()
    targets = np.zeros((len(sel), len(names)), dtype=np.float32)
    extra_found: set[str] = set()
    for i, (v, r) in enumerate(zip(sel["Finding Labels"], rows, strict=True)):
        v = v.strip()
        if v == "":
            targets[i] = np.nan  # not annotated
            continue
        for lab in (x.strip() for x in v.split("|")):
            if not lab or lab == NO_FINDING:
                continue
            if lab not in allowed and not any_label:
                raise LabelError(f"{path}: row {r}: unknown label {lab!r} in 'Finding Labels'; NIH labels are {names} and {NO_FINDING!r}")
            if lab in names:
                targets[i, names.index(lab)] = 1.0
            else:
                extra_found.add(lab)
    if extra_found:  # labels outside the NIH 14 (mapped with harmonize, or to be filtered): extend the source's columns
        extra = sorted(extra_found)
        ext = np.zeros((len(sel), len(extra)), dtype=np.float32)
        for i, v in enumerate(sel["Finding Labels"]):
            labs = {x.strip() for x in v.split("|")}
            if v.strip() == "":
                ext[i] = np.nan
            for k, lab in enumerate(extra):
                if lab in labs:
                    ext[i, k] = 1.0
        targets = np.concatenate([targets, ext], axis=1)
        names = names + extra
    rels = [rel_of[x] for x in sel["Image Index"]]
    paths = [str(Path(r)) if Path(r).is_absolute() else str(root / r) for r in rels]
    splits = [_split_of(r) for r in rels]
    meta = pd.DataFrame({new: sel[old].str.strip().replace({"": None}) for old, new in _META.items() if old in sel.columns})
    if "age" in meta:
        meta["age"] = pd.to_numeric(meta["age"].str.rstrip("Yy"), errors="coerce")  # some exports write "058Y"
    keep = check_images_exist(paths, list(sel["Image Index"]), cfg.on_bad_image, str(path))
    space = LabelSpace(tuple(names), "multilabel")
    table = SampleTable(
        space, list(sel["Image Index"]), paths, targets, [g.strip() or None for g in sel["Patient ID"]],
        splits if any(s is not None for s in splits) else None, meta if len(meta.columns) else None, source=str(path),
    )
    if not keep.all():
        table = table.subset(np.where(keep)[0])
    return table, names


def _extra_source(spec: dict[str, Any], i: int, parent) -> tuple[str, SampleTable, dict[str, str]]:
    """Read one entry of ``extra_sources`` with its own reader."""
    from medlens.config import ConfigError, config_from_dict
    from medlens.data.readers import read_source

    if not isinstance(spec, dict):
        raise ConfigError(f"data.extra_sources[{i}] must be a mapping with a data config")
    spec = dict(spec)
    name = str(spec.pop("name", f"source{i + 1}"))
    mapping = spec.pop("harmonize", None) or {}
    spec.setdefault("kind", "nih")
    spec.setdefault("on_bad_image", parent.on_bad_image)
    sub = config_from_dict({"data": spec}, source=f"data.extra_sources[{i}] ({name})").data
    return name, read_source(sub), dict(mapping)


def _prefixed(values: np.ndarray | None, prefix: str) -> list[str | None] | None:
    if values is None:
        return None
    return [None if v is None else f"{prefix}:{v}" for v in values]


@READERS.register("nih")
def read_nih(cfg) -> SampleTable:
    """Read NIH ChestX-ray14 labels (and any extra sources) into one harmonised :class:`SampleTable`."""
    mapping = dict(cfg.harmonize)
    primary, src_names = _nih_source(cfg, known_extra=[k for k in mapping if k not in NIH_LABELS])
    sources: list[tuple[str, SampleTable, dict[str, str]]] = [("nih", primary, mapping)]
    for i, spec in enumerate(cfg.extra_sources):
        sources.append(_extra_source(spec, i, cfg))
    offered: list[str] = []
    for _, t, m in sources:
        offered.extend(mapped_names(t.label_space.names, m))
    if cfg.label_names:
        target = list(cfg.label_names)
        never = [x for x in target if x not in offered]
        if never:
            raise LabelError(f"data.label_names {never} are not annotated by any source (sources offer {sorted(set(offered))})")
        for _, t, m in sources:
            _report_filtered(t, m, target)
    else:
        target = sorted(set(offered))
    parts = [harmonize_targets(t.targets, t.label_space.names, target, m) for _, t, m in sources]
    targets = np.concatenate(parts, axis=0)
    if cfg.unknown_labels == "negative":
        targets = np.nan_to_num(targets, nan=0.0)
    task = cfg.task or "multilabel"
    space = LabelSpace(tuple(target), task)
    if len(sources) == 1:
        t = primary
        table = SampleTable(space, t.ids, t.images, targets, t.groups, t.splits, t.metadata, source=t.source)
    else:
        ids, images, groups, splits, metas = [], [], [], [], []
        for name, t, _ in sources:
            ids.extend(f"{name}:{x}" for x in t.ids)
            images.extend(t.images.tolist() if not t.in_memory else _in_memory_error(name))
            groups.extend(_prefixed(t.groups, name) or [None] * len(t))
            splits.extend(t.splits.tolist() if t.splits is not None else [None] * len(t))
            m = t.metadata.copy() if t.metadata is not None else pd.DataFrame(index=range(len(t)))
            m["source"] = name
            metas.append(m.reset_index(drop=True))
        table = SampleTable(
            space, ids, images, targets, groups if any(g is not None for g in groups) else None,
            splits if any(s is not None for s in splits) else None,
            pd.concat(metas, ignore_index=True), source=" + ".join(t.source for _, t, _ in sources),
        )
    table.check_nonempty_classes()
    return table


def _report_filtered(t: SampleTable, mapping: dict[str, str], target: Sequence[str]) -> None:
    """One warning for a source whose rows name labels that map outside ``data.label_names`` (rows kept).

    Labels mapped to ``""`` with ``harmonize`` were dropped on purpose and are not counted.
    """
    names = t.label_space.names
    out = [j for j, s in enumerate(names) if mapping.get(s, s) and mapping.get(s, s) not in set(target)]
    if not out or len(t) == 0:
        return
    pos = t.targets[:, out] == 1
    hit = pos.any(axis=1)
    if hit.any():
        counts = {names[j]: int(c) for j, c in zip(out, pos.sum(axis=0), strict=True) if c}
        log_filtered_labels(t.source, int(hit.sum()), counts, target, f"image {t.ids[int(np.argmax(hit))]}", rows_dropped=False)


def _in_memory_error(name: str) -> list[str]:
    raise ValueError(f"data.extra_sources {name!r}: in-memory datasets cannot be merged; use a file-based source")
