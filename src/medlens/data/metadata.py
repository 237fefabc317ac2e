"""Tabular patient metadata (age, sex, anatomical site, view position) as a float vector for fusion models.

:class:`MetadataEncoder` is fitted on the **training split only** and saved in the bundle manifest
(``to_dict``/``from_dict``), so training, evaluation, prediction and serving encode metadata with the same
statistics through the same function (:meth:`MetadataEncoder.transform_columns`; ``transform_table`` and
``transform_rows`` only adapt their input to it).

Encoding (the columns of the output, in this order):

* numeric field ``x``: ``z = (x - mean) / std`` with the training mean and standard deviation (0 when missing,
  clipped to +-10 so one absurd value cannot dominate), then a missing-value indicator (1 when missing).
* categorical field, ``encoding: onehot``: one column per value seen in training, then an ``unknown`` column
  that takes missing values and values never seen in training.
* categorical field, ``encoding: embedding``: one column holding the value's index (0 = ``unknown``,
  1..V = the training vocabulary); the fusion model embeds it (``cardinalities`` gives V + 1 per field).

Values are matched after stripping and lower-casing; blanks and the usual missing tokens (``nan``, ``n/a``,
``unknown``, ``?`` ...) count as missing.

Example:
    >>> from medlens.config import MetadataConfig
    >>> enc = MetadataEncoder.fit_columns({"age": ["40", "60", None], "sex": ["male", "female", "male"]},
    ...                                   MetadataConfig(numeric=["age"], categorical=["sex"]))
    >>> enc.feature_names
    ['age', 'age_missing', 'sex=female', 'sex=male', 'sex=unknown']
    >>> enc.transform_rows([{"age": 50, "sex": "other"}]).tolist()
    [[0.0, 0.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("medlens.data")

UNKNOWN = "unknown"
FORMAT_VERSION = 1
Z_CLIP = 10.0  # standard deviations
MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "none", "null", "unknown", "?", "-"})


class MetadataError(ValueError):
    """Metadata that cannot be encoded (an unparseable number, a column absent from the data, ...)."""


@dataclass(frozen=True)
class NumericField:
    """A numeric field's training statistics."""

    name: str
    mean: float
    std: float
    count: int  # non-missing training values


@dataclass(frozen=True)
class CategoricalField:
    """A categorical field's training vocabulary (normalised values, sorted; ``unknown`` is implicit)."""

    name: str
    vocabulary: tuple[str, ...]


def _is_missing_scalar(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


def _norm_category(v: Any) -> str | None:
    """A category key (stripped, lower-cased) or None when missing."""
    if _is_missing_scalar(v):
        return None
    s = str(v).strip().lower()
    return None if s in MISSING_TOKENS else s


def _parse_number(v: Any, field: str, where: str) -> float:
    """A float, or NaN when missing. Raises :class:`MetadataError` naming the field and row."""
    if _is_missing_scalar(v):
        return math.nan
    if isinstance(v, (bool, int, float, np.integer, np.floating)):
        try:
            x = float(v)
        except OverflowError:  # a 400-digit integer: no float holds it
            raise MetadataError(f"{where}metadata field {field!r}: the number is too large for a float") from None
    else:
        s = str(v).strip()
        if s.lower() in MISSING_TOKENS:
            return math.nan
        try:
            x = float(s)
        except ValueError:
            raise MetadataError(f"{where}metadata field {field!r}: {v!r} is not a number") from None
    if math.isinf(x):
        raise MetadataError(f"{where}metadata field {field!r}: {v!r} is not a finite number")
    return x


class MetadataEncoder:
    """Encode metadata fields to a float32 matrix with statistics fitted on the training split.

    Args:
        numeric: fitted numeric fields.
        categorical: fitted categorical fields.
        encoding: ``onehot`` or ``embedding`` (categorical fields only).

    Build one with :meth:`fit` (from a :class:`~medlens.data.samples.SampleTable`), :meth:`fit_columns`
    (from plain columns) or :meth:`from_dict` (from a bundle manifest).

    Example:
        >>> enc = MetadataEncoder.from_dict(manifest.metadata_encoder)  # doctest: +SKIP
        >>> enc.transform_rows([{"age": 63, "sex": "F"}, {}])  # doctest: +SKIP
    """

    def __init__(self, numeric: Sequence[NumericField], categorical: Sequence[CategoricalField], encoding: str = "onehot") -> None:
        if encoding not in ("onehot", "embedding"):
            raise ValueError(f"unknown metadata encoding {encoding!r}; valid: onehot, embedding")
        names = [f.name for f in numeric] + [f.name for f in categorical]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metadata field {dup[0]!r} is listed more than once (numeric and categorical must not overlap)")
        if not names:
            raise ValueError("data.metadata lists no numeric or categorical field")
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.encoding = encoding
        self._index = [{v: i for i, v in enumerate(f.vocabulary)} for f in self.categorical]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, table, meta_cfg) -> MetadataEncoder:
        """Fit on a table's metadata (pass the **training split**: its statistics are what the model sees).

        Args:
            table: a :class:`~medlens.data.samples.SampleTable` whose ``metadata`` holds the configured columns.
            meta_cfg: a :class:`medlens.config.MetadataConfig` (numeric, categorical, encoding).

        Example:
            >>> enc = MetadataEncoder.fit(table.subset(splits.train), cfg.data.metadata)  # doctest: +SKIP
        """
        wanted = [*meta_cfg.numeric, *meta_cfg.categorical]
        df = table.metadata
        have = [] if df is None else list(df.columns)
        for kind, cols in (("numeric", meta_cfg.numeric), ("categorical", meta_cfg.categorical)):
            for c in cols:
                if c not in have:
                    raise MetadataError(
                        f"{table.source}: data.metadata.{kind}: column {c!r} is not in the dataset's metadata "
                        f"(loaded columns: {have}); the reader must load it (csv: a column of that name)"
                    )
        columns = {c: df[c].tolist() for c in wanted}
        return cls.fit_columns(columns, meta_cfg, where=f"{table.source}: ", ids=list(table.ids))

    @classmethod
    def fit_columns(cls, columns: Mapping[str, Sequence[Any]], meta_cfg, where: str = "", ids: Sequence[Any] | None = None) -> MetadataEncoder:
        """Fit on plain columns (field name -> values); see :meth:`fit`."""
        numeric = []
        for name in meta_cfg.numeric:
            vals = _parse_column(columns[name], name, where, ids)
            ok = vals[~np.isnan(vals)]
            if len(ok) == 0:
                log.warning("%smetadata field %r has no value in the training split; it only carries 'missing'", where, name)
                mean, std = 0.0, 1.0
            else:
                mean = float(ok.mean())
                std = float(ok.std()) if len(ok) > 1 else 0.0
                if not std > 1e-8:
                    std = 1.0  # a constant field: centre it, do not blow it up
            numeric.append(NumericField(name, mean, std, int(len(ok))))
        categorical = []
        for name in meta_cfg.categorical:
            keys = {_norm_category(v) for v in columns[name]}
            vocab = tuple(sorted(k for k in keys if k is not None))
            if not vocab:
                log.warning("%smetadata field %r has no value in the training split; it only carries 'unknown'", where, name)
            categorical.append(CategoricalField(name, vocab))
        return cls(numeric, categorical, meta_cfg.encoding)

    # ------------------------------------------------------------------ layout
    @property
    def fields(self) -> list[str]:
        """Field names this encoder reads, numeric first."""
        return [f.name for f in self.numeric] + [f.name for f in self.categorical]

    @property
    def feature_names(self) -> list[str]:
        """One name per output column."""
        out = []
        for f in self.numeric:
            out += [f.name, f"{f.name}_missing"]
        for f in self.categorical:
            if self.encoding == "onehot":
                out += [f"{f.name}={v}" for v in f.vocabulary] + [f"{f.name}={UNKNOWN}"]
            else:
                out.append(f"{f.name}_index")
        return out

    @property
    def dim(self) -> int:
        """Width of the encoded vector."""
        n = 2 * len(self.numeric)
        if self.encoding == "onehot":
            return n + sum(len(f.vocabulary) + 1 for f in self.categorical)
        return n + len(self.categorical)

    @property
    def cardinalities(self) -> list[int]:
        """``embedding``: indices per categorical field (vocabulary + ``unknown``); ``onehot``: empty."""
        return [len(f.vocabulary) + 1 for f in self.categorical] if self.encoding == "embedding" else []

    def missing_vector(self) -> np.ndarray:
        """The encoding of a row whose every field is missing (used when no metadata is given)."""
        return self.transform_rows([{}])[0]

    def architecture(self) -> dict[str, Any]:
        """Fields a fusion model's architecture dict needs beyond ``meta_dim``."""
        return {"meta_cardinalities": self.cardinalities, "meta_missing": [float(x) for x in self.missing_vector()]}

    # ------------------------------------------------------------------ encoding (the one function)
    def transform_columns(self, columns: Mapping[str, Sequence[Any]], n: int, where: str = "", ids: Sequence[Any] | None = None) -> np.ndarray:
        """Encode ``n`` rows given as columns (field -> values); an absent field is missing in every row.

        Returns:
            float32 array (n, dim).
        """
        out = np.zeros((n, self.dim), dtype=np.float32)
        col = 0
        for f in self.numeric:
            vals = columns.get(f.name)
            x = np.full(n, np.nan) if vals is None else _parse_column(vals, f.name, where, ids)
            miss = np.isnan(x)
            z = np.clip((np.where(miss, f.mean, x) - f.mean) / f.std, -Z_CLIP, Z_CLIP)
            out[:, col] = z
            out[:, col + 1] = miss
            col += 2
        for f, index in zip(self.categorical, self._index, strict=True):
            vals = columns.get(f.name)
            keys = [None] * n if vals is None else [_norm_category(v) for v in vals]
            if self.encoding == "onehot":
                unk = len(f.vocabulary)
                pos = np.asarray([index.get(k, unk) if k is not None else unk for k in keys], dtype=np.int64)
                out[np.arange(n), col + pos] = 1.0
                col += unk + 1
            else:
                out[:, col] = [index[k] + 1 if k in index else 0 for k in keys]
                col += 1
        return out

    def transform_table(self, table) -> np.ndarray:
        """Encode every row of a :class:`~medlens.data.samples.SampleTable` (float32 (N, dim)).

        A configured column absent from the table is treated as missing in every row (with a warning).

        Example:
            >>> X = enc.transform_table(table.subset(splits.val))  # doctest: +SKIP
        """
        df = table.metadata
        have = set() if df is None else set(df.columns)
        absent = [c for c in self.fields if c not in have]
        if absent:
            log.warning("%s: metadata columns %s are absent; encoded as missing", table.source, absent)
        columns = {c: df[c].tolist() for c in self.fields if c in have}
        return self.transform_columns(columns, len(table), where=f"{table.source}: ", ids=list(table.ids))

    def transform_rows(self, rows: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
        """Encode one dict per row (predict/serve); missing fields, ``None`` rows and blanks are allowed.

        Keys match field names exactly, or else case-insensitively; keys that match no field are ignored
        with a warning (a typo would otherwise be silently read as "missing"). Values come from clients, so
        they are checked strictly: a numeric field takes a finite number, a numeric string or null (a boolean,
        a list or an object is refused rather than read as 1 or as a category); a categorical field takes a
        string, a number or null. NaN counts as missing (tables use it); JSON text from clients goes through
        :func:`parse_metadata_json`, which refuses ``NaN``/``Infinity`` literals.

        Raises:
            MetadataError: naming the row (when there are several) and the field.

        Example:
            >>> enc.transform_rows([{"age": 63, "sex": "F"}, {"sex": "M"}, None])  # doctest: +SKIP
        """
        lower = {f.lower(): f for f in self.fields}
        numeric = {f.name for f in self.numeric}
        columns: dict[str, list[Any]] = {f: [None] * len(rows) for f in self.fields}
        unused: set[str] = set()
        for i, row in enumerate(rows):
            if row is None:
                continue
            if not isinstance(row, Mapping):
                raise MetadataError(f"metadata row {i}: expected a mapping of field -> value, got {type(row).__name__}")
            for k, v in row.items():
                name = k if k in columns else lower.get(str(k).lower())
                if name is None:
                    unused.add(str(k))
                else:
                    _check_given_value(v, name, name in numeric, f"metadata row {i}: " if len(rows) > 1 else "")
                    columns[name][i] = v
        if unused:
            log.warning("metadata fields %s are not used by this model (it reads %s)", sorted(unused), self.fields)
        return self.transform_columns(columns, len(rows), where="", ids=None)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored in the bundle manifest as ``metadata_encoder``)."""
        return {
            "format_version": FORMAT_VERSION,
            "encoding": self.encoding,
            "numeric": [{"name": f.name, "mean": f.mean, "std": f.std, "count": f.count} for f in self.numeric],
            "categorical": [{"name": f.name, "vocabulary": list(f.vocabulary)} for f in self.categorical],
            "dim": self.dim,
            "feature_names": self.feature_names,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetadataEncoder:
        """Rebuild from :meth:`to_dict` output; raises :class:`MetadataError` on a malformed dict."""
        try:
            if int(d.get("format_version", 1)) > FORMAT_VERSION:
                raise MetadataError(f"metadata_encoder format {d['format_version']} is newer than this medlens supports")
            enc = cls(
                [NumericField(str(f["name"]), float(f["mean"]), float(f["std"]), int(f.get("count", 0))) for f in d.get("numeric", [])],
                [CategoricalField(str(f["name"]), tuple(str(v) for v in f["vocabulary"])) for f in d.get("categorical", [])],
                str(d.get("encoding", "onehot")),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, MetadataError):
                raise
            raise MetadataError(f"manifest metadata_encoder is malformed ({type(e).__name__}: {e})") from None
        if "dim" in d and int(d["dim"]) != enc.dim:
            raise MetadataError(f"manifest metadata_encoder: dim {d['dim']} does not match its fields ({enc.dim})")
        return enc

    def __repr__(self) -> str:
        return f"MetadataEncoder(fields={self.fields}, encoding={self.encoding!r}, dim={self.dim})"


def _parse_column(values: Sequence[Any], field: str, where: str, ids: Sequence[Any] | None) -> np.ndarray:
    """Numbers of one column (NaN = missing); an error names the row (1-based) and its id."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = _parse_number(v, field, "")
        except MetadataError as e:
            row = f"row {i + 1}" + ("" if ids is None else f" (id {ids[i]})")
            raise MetadataError(f"{where}{row}: {e}") from None
    return out


def _check_given_value(v: Any, field: str, numeric: bool, where: str) -> None:
    """Refuse a client-given value that is no scalar of the field's kind (see ``transform_rows``)."""
    if v is None:
        return
    if isinstance(v, (list, tuple, dict, set)):
        raise MetadataError(f"{where}metadata field {field!r}: expected a single value, got a {type(v).__name__}")
    if numeric:
        if isinstance(v, (bool, np.bool_)):
            raise MetadataError(f"{where}metadata field {field!r}: {v!r} is a boolean, not a number")
    elif not isinstance(v, (str, int, float, np.integer, np.floating)):
        raise MetadataError(f"{where}metadata field {field!r}: expected a string, got {type(v).__name__}")


_KEY_COLUMNS = ("image", "path", "source", "file", "filename")


def _refuse_constant(name: str) -> Any:
    raise MetadataError(f"{name} is not a number (omit the field or send null when unknown)")


def parse_metadata_json(text: str, where: str = "metadata") -> Any:
    """Parse metadata JSON from a client, refusing the non-standard ``NaN``/``Infinity`` literals.

    Raises:
        MetadataError: ``<where>: ...`` for malformed JSON or such a literal.

    Example:
        >>> parse_metadata_json('{"age": 63}')
        {'age': 63}
    """
    import json

    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise MetadataError(f"{where}: not valid JSON ({e.msg} at position {e.pos})") from None
    except MetadataError as e:
        raise MetadataError(f"{where}: {e}") from None
    except RecursionError:
        raise MetadataError(f"{where}: JSON nested too deeply") from None


def metadata_rows_for(spec: str, images: Sequence[str]) -> list[dict[str, Any] | None]:
    """Per-image metadata for ``medlens predict --metadata``: JSON text, a ``.json`` file or a ``.csv`` file.

    * a JSON object: the same metadata for every image; a JSON list: one object (or null) per image.
    * a CSV with an image column (``image``, ``path``, ``source``, ``file`` or ``filename``) and one column per
      field; rows are matched to images by the exact path, else by file name. Images without a row, and blank
      cells, are missing metadata.

    Example:
        >>> metadata_rows_for('{"age": 63, "sex": "F"}', ["a.png", "b.png"])
        [{'age': 63, 'sex': 'F'}, {'age': 63, 'sex': 'F'}]
    """
    from pathlib import Path

    text = spec.strip()
    where = "--metadata"
    if not text.startswith(("{", "[")):
        p = Path(spec)
        if not p.is_file():
            raise FileNotFoundError(f"--metadata: {spec!r} is neither JSON nor an existing .json/.csv file")
        where = str(p)
        if p.suffix.lower() == ".csv":
            return _rows_from_csv(p, images)
        text = p.read_text()
    obj = parse_metadata_json(text, where)
    if isinstance(obj, dict):
        return [dict(obj) for _ in images]
    if isinstance(obj, list):
        if len(obj) != len(images):
            raise MetadataError(f"{where}: {len(obj)} metadata objects for {len(images)} images")
        bad = [i for i, r in enumerate(obj) if r is not None and not isinstance(r, dict)]
        if bad:
            raise MetadataError(f"{where}: item {bad[0]} is not an object")
        return list(obj)
    raise MetadataError(f"{where}: expected a JSON object or a list of objects")


def texts_for(path: str, images: Sequence[str], column: str) -> list[str | None]:
    """Per-image text for ``medlens predict --text FILE.csv``: the ``column`` of the row whose image column
    (``image``, ``path``, ``source``, ``file`` or ``filename``) names each image (exact path, else file name).

    Images without a row, and blank cells, carry no text.

    Raises:
        MetadataError: no such file, no image column, or no ``column``.

    Example:
        >>> texts_for("reports.csv", ["a.png"], "report")  # doctest: +SKIP
        ['No acute findings.']
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".csv":
        raise MetadataError(f"--text: {path!r} is not an existing .csv file")
    import pandas as pd

    header = list(pd.read_csv(p, dtype=str, nrows=0).columns)
    if column not in header:
        raise MetadataError(f"--text: {p} has no column {column!r} (the bundle's data.text_column, else 'text'); columns are {header}")
    rows = _rows_from_csv(p, images)
    return [None if r is None or r.get(column) is None else str(r[column]) for r in rows]


def _rows_from_csv(path, images: Sequence[str]) -> list[dict[str, Any] | None]:
    from pathlib import Path

    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    key = next((c for c in df.columns if c.strip().lower() in _KEY_COLUMNS), None)
    if key is None:
        raise MetadataError(f"{path}: no image column; name one of {list(_KEY_COLUMNS)}")
    fields = [c for c in df.columns if c != key]
    by_path: dict[str, dict[str, Any]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        row = {f: (None if str(rec[f]).strip() == "" else rec[f]) for f in fields}
        by_path[str(rec[key]).strip()] = row
        by_name.setdefault(Path(str(rec[key]).strip()).name, row)
    out = [by_path.get(str(im), by_name.get(Path(str(im)).name)) for im in images]
    missing = [im for im, r in zip(images, out, strict=True) if r is None]
    if missing:
        log.warning("%s: no metadata row for %d images (e.g. %s); their metadata is missing", path, len(missing), missing[:3])
    return out
