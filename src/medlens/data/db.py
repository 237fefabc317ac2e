"""Images and annotations in a SQL database (SQLite file or PostgreSQL server), on SQLAlchemy Core.

Schema (created by :func:`init_db` / ``medlens db init``; every table is plain SQL, readable by any tool)::

    datasets            id, name (unique), description, image_root, created_at
    examinations        id, dataset_id -> datasets, external_id, patient_id (nullable), meta (JSON)
                        unique (dataset_id, external_id)
    images              id, dataset_id -> datasets, examination_id -> examinations (nullable),
                        external_id, path, split (train/val/test or NULL), meta (JSON)
                        unique (dataset_id, external_id)
    label_sets          id, name, version, task (nullable), description, created_at
                        unique (name, version)
    labels              id, label_set_id -> label_sets, name, position      unique (label_set_id, name)
    image_annotations   image_id -> images, label_id -> labels, value (boolean)
                        primary key (image_id, label_id)

An annotation row says a finding is present (``true``) or absent (``false``) in an image; **no row means
unknown** (NaN in the targets), never negative. A label set is a named, versioned list of labels; a new
version is a new list (annotations belong to the labels of one version). Image paths are relative to the
dataset's ``image_root`` (or absolute).

Connections: the URL comes from the config or ``$MEDLENS_DB_URL``; a password is never written in a config
but read from an environment variable (default ``$MEDLENS_DB_PASSWORD``) or a password file, and never logged
(URLs are shown with ``***``). A refused password or an unreachable server is a :class:`DatabaseError` that
says which. Reads stream in chunks (server-side cursors on PostgreSQL), so no query result is held as a
full-table Python list.

Example:
    >>> from medlens.data.db import init_db, import_dataset
    >>> engine = init_db("sqlite:///medlens.db")  # doctest: +SKIP
    >>> import_dataset("labels.csv", "sqlite:///medlens.db", dataset="nih", label_set="nih14",
    ...                overrides=["data.label_column=Finding Labels"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medlens.config import REDACTED

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import URL, Engine

    from medlens.data.samples import SampleTable

log = logging.getLogger("medlens.db")

DEFAULT_PASSWORD_ENV = "MEDLENS_DB_PASSWORD"
URL_ENV = "MEDLENS_DB_URL"
CONNECT_TIMEOUT_S = 10  # seconds to wait for a server before calling it unreachable


class DatabaseError(ValueError):
    """The database cannot be reached, refused the credentials, lacks the schema, or lacks the named rows."""


# ------------------------------------------------------------------------------------------- schema
def _build_schema():
    import sqlalchemy as sa

    md = sa.MetaData()
    now = sa.func.current_timestamp()
    datasets = sa.Table(
        "datasets", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.Text),
        sa.Column("image_root", sa.String(2000)),
        sa.Column("created_at", sa.DateTime, server_default=now),
    )
    examinations = sa.Table(
        "examinations", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(200)),
        sa.Column("meta", sa.JSON),
        sa.UniqueConstraint("dataset_id", "external_id", name="uq_examinations_dataset_external"),
    )
    images = sa.Table(
        "images", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("examination_id", sa.Integer, sa.ForeignKey("examinations.id", ondelete="SET NULL")),
        sa.Column("external_id", sa.String(500), nullable=False),
        sa.Column("path", sa.String(2000), nullable=False),
        sa.Column("split", sa.String(16)),
        sa.Column("meta", sa.JSON),
        sa.UniqueConstraint("dataset_id", "external_id", name="uq_images_dataset_external"),
        sa.Index("ix_images_dataset_id", "dataset_id", "id"),
    )
    label_sets = sa.Table(
        "label_sets", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("task", sa.String(16)),
        sa.Column("description", sa.Text),
        sa.Column("created_at", sa.DateTime, server_default=now),
        sa.UniqueConstraint("name", "version", name="uq_label_sets_name_version"),
    )
    labels = sa.Table(
        "labels", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label_set_id", sa.Integer, sa.ForeignKey("label_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.UniqueConstraint("label_set_id", "name", name="uq_labels_set_name"),
    )
    annotations = sa.Table(
        "image_annotations", md,
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label_id", sa.Integer, sa.ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("value", sa.Boolean, nullable=False),
        sa.Index("ix_image_annotations_label", "label_id"),
    )
    return md, datasets, examinations, images, label_sets, labels, annotations


class _Schema:
    """Lazily built tables (SQLAlchemy is an optional dependency: ``pip install 'medlens[sql]'``)."""

    _cache: tuple | None = None

    _NAMES = ("metadata", "datasets", "examinations", "images", "label_sets", "labels", "annotations")

    def __getattr__(self, name: str):
        if name not in _Schema._NAMES:
            raise AttributeError(name)
        if _Schema._cache is None:
            try:
                _Schema._cache = _build_schema()
            except ImportError as e:  # pragma: no cover - sql extra missing
                raise ImportError("SQL data needs SQLAlchemy: pip install 'medlens[sql]'") from e
        md, ds, ex, im, ls, lb, an = _Schema._cache
        return {"metadata": md, "datasets": ds, "examinations": ex, "images": im, "label_sets": ls,
                "labels": lb, "annotations": an}[name]


schema = _Schema()


# -------------------------------------------------------------------------------------- connecting
def resolve_url(
    url: str | None = None,
    password_env: str | None = DEFAULT_PASSWORD_ENV,
    password_file: str | os.PathLike | None = None,
) -> URL:
    """The database URL with its password filled in from the environment or a password file.

    Args:
        url: SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://user@host:5432/db``);
            default ``$MEDLENS_DB_URL``. A bare file path means a SQLite file.
        password_env: environment variable holding the password (used when the URL has none).
        password_file: file whose first line is the password (used when the variable is unset).

    Returns:
        A ``sqlalchemy.engine.URL`` (print it with ``safe_url``; ``str()`` would hide the password too).

    Example:
        >>> resolve_url("sqlite:///data.db").drivername
        'sqlite'
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = url or os.environ.get(URL_ENV)
    if not text:
        raise DatabaseError(f"no database URL: set data.url (e.g. sqlite:///medlens.db) or ${URL_ENV}")
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        u = make_url(text)
    except ArgumentError:
        raise DatabaseError(f"invalid database URL {safe_url_text(text)!r}") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver medlens installs
    if u.password == REDACTED:  # a URL from a saved config, its password redacted: filled in as if it had none
        u = u._replace(password=None)  # URL.set(password=None) would keep it
    if u.query.get("password") == REDACTED:
        u = u.difference_update_query(["password"])
    if u.password is None and not u.drivername.startswith("sqlite"):
        pw = os.environ.get(password_env) if password_env else None
        if pw is None and password_file:
            pf = Path(password_file).expanduser()
            if not pf.is_file():
                raise FileNotFoundError(f"data.password_file: password file not found: {pf}")
            lines = pf.read_text().splitlines()
            pw = lines[0].rstrip("\r\n") if lines else ""
        if pw is not None:
            u = u.set(password=pw)
    return u


def safe_url(u: URL) -> str:
    """The URL with the password replaced by ``***`` (for messages and logs)."""
    return u.render_as_string(hide_password=True)


def safe_url_text(text: str) -> str:
    """Mask ``user:password@`` in a URL string that could not be parsed."""
    import re

    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", text)


def _sqlite_file(u: URL) -> Path | None:
    db = u.database
    if not u.drivername.startswith("sqlite") or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _explain_operational(u: URL, err: BaseException) -> DatabaseError:
    """Turn a driver error into a message that says what to fix (never containing the password)."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip()
    if u.password:
        text = text.replace(str(u.password), "***")
    low = text.lower()
    where = f"{u.host or 'localhost'}:{u.port or 5432}" if u.host or u.port else "the local socket"
    first = text.splitlines()[0] if text else type(orig).__name__
    if "password authentication failed" in low or "authentication failed" in low or "28p01" in low:
        return DatabaseError(f"{safe_url(u)}: the server refused the password for user {u.username!r} ({first})")
    if "no password supplied" in low or "fe_sendauth" in low:
        return DatabaseError(
            f"{safe_url(u)}: the server asks for a password; set ${DEFAULT_PASSWORD_ENV} (or data.password_env) "
            "or data.password_file"
        )
    if any(s in low for s in ("connection refused", "could not connect", "timeout", "timed out",
                              "could not translate host", "name or service not known", "no route to host",
                              "network is unreachable", "connection failed")):
        return DatabaseError(f"{safe_url(u)}: cannot reach the database server at {where} ({first})")
    if "database" in low and "does not exist" in low:
        return DatabaseError(f"{safe_url(u)}: {first}")
    if "unable to open database file" in low:
        return DatabaseError(f"{safe_url(u)}: cannot open the SQLite file ({first})")
    return DatabaseError(f"{safe_url(u)}: {first}")


def connect(
    url: str | None = None,
    password_env: str | None = DEFAULT_PASSWORD_ENV,
    password_file: str | os.PathLike | None = None,
    *,
    create: bool = False,
    require_schema: bool = True,
) -> Engine:
    """Open (and test) a database connection.

    Args:
        url: see :func:`resolve_url`.
        password_env: environment variable with the password.
        password_file: file with the password.
        create: allow a new SQLite file to be created (``db init``); otherwise a missing file is an error.
        require_schema: raise :class:`DatabaseError` when the medlens tables are missing.

    Returns:
        A SQLAlchemy ``Engine`` whose connection was tested.

    Example:
        >>> engine = connect("sqlite:///medlens.db")  # doctest: +SKIP
    """
    import sqlalchemy as sa

    u = resolve_url(url, password_env, password_file)
    kwargs: dict[str, Any] = {}
    sf = _sqlite_file(u)
    if sf is not None:
        if not sf.is_file():
            if not create:
                raise FileNotFoundError(f"SQLite database file not found: {sf} (create it with `medlens db init`)")
            sf.parent.mkdir(parents=True, exist_ok=True)
    elif u.drivername.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        engine = sa.create_engine(u, pool_pre_ping=True, **kwargs)
    except Exception as e:  # missing driver, bad arguments
        raise DatabaseError(f"{safe_url(u)}: cannot create an engine ({type(e).__name__}: {e})") from None
    if sf is not None:
        _enable_sqlite_fk(engine)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DatabaseError) as e:
        engine.dispose()
        raise _explain_operational(u, e) from None
    if require_schema:
        missing = [t for t in ("datasets", "images", "label_sets", "labels", "image_annotations") if not sa.inspect(engine).has_table(t)]
        if missing:
            engine.dispose()
            raise DatabaseError(f"{safe_url(u)}: no medlens schema (missing tables {missing}); run `medlens db init`")
    log.debug("connected to %s", safe_url(u))
    return engine


def _enable_sqlite_fk(engine: Engine) -> None:
    """SQLite ignores foreign keys (and so ON DELETE CASCADE) unless asked per connection."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _fk(dbapi_conn, _record):  # pragma: no cover - trivial
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def init_db(
    url: str | None = None,
    password_env: str | None = DEFAULT_PASSWORD_ENV,
    password_file: str | os.PathLike | None = None,
) -> Engine:
    """Create the medlens tables (idempotent: existing tables and rows are kept).

    Example:
        >>> engine = init_db("sqlite:///medlens.db")  # doctest: +SKIP
    """
    engine = connect(url, password_env, password_file, create=True, require_schema=False)
    schema.metadata.create_all(engine)
    log.info("medlens schema ready in %s", safe_url(engine.url))
    return engine


# ------------------------------------------------------------------------------------------ lookups
@dataclass(frozen=True)
class LabelSetInfo:
    """One version of a label set and its labels in position order."""

    id: int
    name: str
    version: int
    task: str | None
    label_ids: tuple[int, ...]
    label_names: tuple[str, ...]


def find_dataset(conn, name: str) -> tuple[int, str | None]:
    """(id, image_root) of a dataset; the error lists the datasets that exist."""
    import sqlalchemy as sa

    d = schema.datasets
    row = conn.execute(sa.select(d.c.id, d.c.image_root).where(d.c.name == name)).first()
    if row is None:
        have = [r[0] for r in conn.execute(sa.select(d.c.name).order_by(d.c.name).limit(50))]
        raise DatabaseError(f"no dataset named {name!r} in the database; datasets: {have or 'none'}")
    return int(row[0]), row[1]


def find_label_set(conn, name: str, version: int | None = None) -> LabelSetInfo:
    """A label set version (the newest when ``version`` is None) with its labels."""
    import sqlalchemy as sa

    ls, lb = schema.label_sets, schema.labels
    versions = [int(v) for (v,) in conn.execute(sa.select(ls.c.version).where(ls.c.name == name).order_by(ls.c.version))]
    if not versions:
        have = [r[0] for r in conn.execute(sa.select(ls.c.name).distinct().order_by(ls.c.name).limit(50))]
        raise DatabaseError(f"no label set named {name!r} in the database; label sets: {have or 'none'}")
    v = versions[-1] if version is None else int(version)
    if v not in versions:
        raise DatabaseError(f"label set {name!r} has no version {v}; versions: {versions}")
    row = conn.execute(sa.select(ls.c.id, ls.c.task).where(ls.c.name == name, ls.c.version == v)).one()
    rows = conn.execute(sa.select(lb.c.id, lb.c.name).where(lb.c.label_set_id == row[0]).order_by(lb.c.position, lb.c.id)).all()
    return LabelSetInfo(int(row[0]), name, v, row[1], tuple(int(r[0]) for r in rows), tuple(str(r[1]) for r in rows))


# ------------------------------------------------------------------------------------------ reading
@dataclass
class ImageColumns:
    """Columns of a dataset's images, in ``images.id`` order (built chunk by chunk)."""

    image_ids: np.ndarray  # int64, ascending
    ids: np.ndarray  # object (external ids)
    paths: np.ndarray  # object (as stored)
    splits: np.ndarray  # object (None where unset)
    groups: np.ndarray  # object (None where no examination)
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # requested metadata keys -> object arrays


def _stream(conn, stmt, chunk_size: int) -> Iterator[Sequence[Any]]:
    """Rows of a SELECT as plain tuples, ``chunk_size`` at a time.

    The statement is compiled by SQLAlchemy but fetched on the driver's own cursor: SQLAlchemy's per-row result
    processing costs more than the query itself for the annotation table (about 5 us per row). PostgreSQL gets
    a named (server-side) cursor, so the server sends rows in chunks instead of the whole result at once.
    """
    import uuid

    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.params
    if compiled.positional:
        params = tuple(compiled.params[k] for k in compiled.positiontup)
    conn.execute(sa_text("SELECT 1"))  # make sure a transaction is open (server-side cursors need one)
    dbapi = conn.connection.dbapi_connection
    server_side = conn.dialect.name == "postgresql"
    cur = dbapi.cursor(name=f"medlens_{uuid.uuid4().hex[:12]}") if server_side else dbapi.cursor()
    try:
        if server_side:
            cur.itersize = chunk_size
        cur.execute(str(compiled), params)
        while True:
            rows = cur.fetchmany(chunk_size)
            if not rows:
                break
            yield rows
    finally:
        cur.close()


def sa_text(sql: str):
    import sqlalchemy as sa

    return sa.text(sql)


def read_images(
    conn,
    dataset_id: int,
    chunk_size: int = 5000,
    meta_keys: Sequence[str] = (),
    group_by: Literal["patient", "examination"] = "patient",
) -> ImageColumns:
    """Stream a dataset's images into columns (never a full-table list of rows)."""
    import sqlalchemy as sa

    im, ex = schema.images, schema.examinations
    group_col = sa.func.coalesce(ex.c.patient_id, ex.c.external_id) if group_by == "patient" else ex.c.external_id
    cols = [im.c.id, im.c.external_id, im.c.path, im.c.split, group_col]
    if meta_keys:
        cols.append(im.c.meta)
    stmt = (
        sa.select(*cols)
        .select_from(im.outerjoin(ex, im.c.examination_id == ex.c.id))
        .where(im.c.dataset_id == dataset_id)
        .order_by(im.c.id)
    )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image_ids", "ids", "paths", "splits", "groups")}
    meta_parts: dict[str, list[np.ndarray]] = {k: [] for k in meta_keys}
    for chunk in _stream(conn, stmt, chunk_size):
        cols_t = list(zip(*chunk, strict=True))
        parts["image_ids"].append(np.asarray(cols_t[0], dtype=np.int64))
        parts["ids"].append(np.asarray(cols_t[1], dtype=object))
        parts["paths"].append(np.asarray(cols_t[2], dtype=object))
        parts["splits"].append(np.asarray(cols_t[3], dtype=object))
        parts["groups"].append(np.asarray([None if g is None else str(g) for g in cols_t[4]], dtype=object))
        if meta_keys:
            metas = [json.loads(m) if isinstance(m, str | bytes) else m for m in cols_t[5]]  # SQLite returns JSON text
            for k in meta_keys:
                meta_parts[k].append(np.asarray([None if m is None else m.get(k) for m in metas], dtype=object))
    if not parts["ids"]:
        empty = np.empty(0, dtype=object)
        return ImageColumns(np.empty(0, dtype=np.int64), empty, empty, empty, empty, {k: empty for k in meta_keys})
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return ImageColumns(cat["image_ids"], cat["ids"], cat["paths"], cat["splits"], cat["groups"],
                        {k: np.concatenate(v) for k, v in meta_parts.items()})


def read_annotations(conn, dataset_id: int, labels: LabelSetInfo, image_ids: np.ndarray, chunk_size: int = 5000) -> np.ndarray:
    """Targets (N, K) float32 for ``image_ids`` (ascending): 1 true, 0 false, NaN where no annotation row exists."""
    import sqlalchemy as sa

    im, an = schema.images, schema.annotations
    n, k = len(image_ids), len(labels.label_ids)
    targets = np.full((n, k), np.nan, dtype=np.float32)
    if n == 0 or k == 0:
        return targets
    col_of = {lid: j for j, lid in enumerate(labels.label_ids)}
    lid_sorted = np.asarray(sorted(col_of), dtype=np.int64)
    col_sorted = np.asarray([col_of[x] for x in lid_sorted], dtype=np.int64)
    stmt = (
        sa.select(an.c.image_id, an.c.label_id, an.c.value)
        .join(im, im.c.id == an.c.image_id)
        .where(im.c.dataset_id == dataset_id, an.c.label_id.in_(list(labels.label_ids)))
    )
    for chunk in _stream(conn, stmt, chunk_size):
        a = np.asarray(chunk, dtype=np.int64)  # (image_id, label_id, value): booleans become 0/1
        rows = np.searchsorted(image_ids, a[:, 0])
        ok = (rows < n) & (image_ids[np.minimum(rows, n - 1)] == a[:, 0])  # rows added after the image scan
        cols = col_sorted[np.searchsorted(lid_sorted, a[:, 1])]
        targets[rows[ok], cols[ok]] = a[ok, 2]
    return targets


# ------------------------------------------------------------------------------------------ writing
@dataclass
class ImportSummary:
    """What :func:`import_table` wrote."""

    url: str
    dataset: str
    label_set: str
    version: int
    images: int
    examinations: int
    annotations: int
    labels: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _json_safe(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, str | int | float | bool):
        return v
    return str(v)


def _ensure_label_set(conn, name: str, names: Sequence[str], task: str | None, version: int | None) -> LabelSetInfo:
    """Reuse a version with exactly these labels, or create a new version."""
    import sqlalchemy as sa

    ls, lb = schema.label_sets, schema.labels
    versions = [int(v) for (v,) in conn.execute(sa.select(ls.c.version).where(ls.c.name == name).order_by(ls.c.version))]
    target = version if version is not None else (versions[-1] if versions else 1)
    if target in versions:
        info = find_label_set(conn, name, target)
        if list(info.label_names) == list(names):
            return info
        if version is not None:
            raise DatabaseError(
                f"label set {name!r} version {version} has labels {list(info.label_names)}, not {list(names)}; "
                "import into a new version"
            )
        target = versions[-1] + 1
    set_id = conn.execute(
        sa.insert(ls).values(name=name, version=target, task=task, created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)).returning(ls.c.id)
    ).scalar_one()
    conn.execute(sa.insert(lb), [{"label_set_id": set_id, "name": n, "position": i} for i, n in enumerate(names)])
    log.info("created label set %r version %d with %d labels", name, target, len(names))
    return find_label_set(conn, name, target)


def _relative_to(path: str, root: str) -> str:
    """``path`` relative to ``root`` (posix separators) when it lies below it, else ``path`` unchanged."""
    base = root.rstrip(os.sep) + os.sep
    cand = os.path.abspath(path)
    if not cand.startswith(base):
        cand = os.path.realpath(path)  # the root was resolved: follow links only when needed (slow)
    return cand[len(base) :].replace(os.sep, "/") if cand.startswith(base) else path


def _insert_rows(conn, table, columns: Sequence[str], rows: list[tuple]) -> None:
    """Bulk insert on the driver's cursor, in the connection's transaction: COPY on PostgreSQL, executemany
    elsewhere (SQLAlchemy's per-row parameter processing would dominate a million annotation rows)."""
    import sqlalchemy as sa

    dbapi = conn.connection.dbapi_connection
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        with dbapi.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        return
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if mark is None:  # an unusual driver: let SQLAlchemy bind the parameters
        conn.execute(sa.insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
        return
    cur = dbapi.cursor()
    try:
        cur.executemany(f"INSERT INTO {table.name} ({names}) VALUES ({', '.join([mark] * len(columns))})", rows)
    finally:
        cur.close()


def import_table(
    engine: Engine,
    table: SampleTable,
    dataset: str,
    label_set: str,
    version: int | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    groups_are: Literal["patient", "examination"] = "patient",
    replace: bool = False,
    description: str | None = None,
    chunk_size: int = 5000,
) -> ImportSummary:
    """Write a :class:`SampleTable` into the database as one dataset and one label set version.

    Every group becomes one examination (``patient_id`` is the group when ``groups_are == 'patient'``). Known
    targets become annotation rows (1 true, 0 false); unknown (NaN) targets write no row. Everything is written
    in one transaction: a failed import leaves the database as it was.

    Args:
        engine: from :func:`connect` / :func:`init_db`.
        table: samples with image file paths.
        dataset: dataset name (must be new unless ``replace``).
        label_set: label set name; the version is reused when its labels are identical, else a new one is made.
        version: an explicit label set version.
        image_root: store image paths relative to this folder (portable databases).
        groups_are: whether the table's groups are patients or examinations.
        replace: delete an existing dataset of that name first.
        description: free text stored with the dataset.
        chunk_size: rows per INSERT batch.

    Returns:
        :class:`ImportSummary`.

    Example:
        >>> import_table(engine, table, "nih1000", "nih14")  # doctest: +SKIP
    """
    import sqlalchemy as sa

    if table.in_memory:
        raise ValueError(f"{table.source}: in-memory images cannot be imported; the database stores image file paths")
    d, ex, im, an = schema.datasets, schema.examinations, schema.images, schema.annotations
    root = Path(image_root).resolve() if image_root else None
    names = list(table.label_space.names)
    n = len(table)
    with engine.begin() as conn:
        old = conn.execute(sa.select(d.c.id).where(d.c.name == dataset)).scalar()
        if old is not None:
            if not replace:
                raise DatabaseError(f"dataset {dataset!r} already exists in {safe_url(engine.url)}; use --replace to overwrite it")
            _delete_dataset(conn, old)
        info = _ensure_label_set(conn, label_set, names, table.label_space.task, version)
        ds_id = conn.execute(
            sa.insert(d).values(name=dataset, description=description, image_root=str(root) if root else None,
                                created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)).returning(d.c.id)
        ).scalar_one()
        ids_all = [str(x) for x in table.ids]
        if len(set(ids_all)) != n:
            seen: set[str] = set()
            dup = next(x for x in ids_all if x in seen or seen.add(x))
            raise DatabaseError(f"{table.source}: sample id {dup!r} appears more than once; ids must be unique within a dataset")
        # examinations, one per group (the dataset row is new and uncommitted: nobody else can add to it)
        exam_of: dict[str, int] = {}
        if table.groups is not None:
            uniq = [g for g in dict.fromkeys(table.groups.tolist()) if g is not None]
            _insert_rows(conn, ex, ("dataset_id", "external_id", "patient_id"),
                         [(ds_id, g, g if groups_are == "patient" else None) for g in uniq])
            for chunk in _stream(conn, sa.select(ex.c.external_id, ex.c.id).where(ex.c.dataset_id == ds_id), chunk_size):
                exam_of.update((str(e), int(i)) for e, i in chunk)
        root_s = str(root) if root is not None else None
        n_ann = 0
        last_id = 0
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            metas = table.metadata.iloc[start:stop].to_dict("records") if table.metadata is not None else None
            rows = []
            for k, i in enumerate(range(start, stop)):
                p = str(table.images[i])
                if root_s is not None:
                    p = _relative_to(p, root_s)
                g = None if table.groups is None else table.groups[i]
                meta = None if metas is None else json.dumps({c: _json_safe(v) for c, v in metas[k].items()})
                rows.append((ds_id, exam_of.get(g) if g is not None else None, ids_all[i], p,
                             None if table.splits is None else table.splits[i], meta))
            _insert_rows(conn, im, ("dataset_id", "examination_id", "external_id", "path", "split", "meta"), rows)
            # ids of the rows just inserted (ascending ids, our dataset only), matched back by external id
            got: dict[str, int] = {}
            q = sa.select(im.c.external_id, im.c.id).where(im.c.dataset_id == ds_id, im.c.id > last_id)
            for chunk in _stream(conn, q, chunk_size):
                got.update((str(e), int(x)) for e, x in chunk)
            ids = [got[ids_all[i]] for i in range(start, stop)]
            last_id = max(last_id, max(ids))
            t = table.targets[start:stop]
            r, c = np.nonzero(~np.isnan(t))
            if len(r):
                ann = [(ids[a], info.label_ids[b], bool(t[a, b] > 0.5)) for a, b in zip(r.tolist(), c.tolist(), strict=True)]
                _insert_rows(conn, an, ("image_id", "label_id", "value"), ann)
                n_ann += len(ann)
    log.info("imported %d images, %d annotations into dataset %r (label set %r v%d)", n, n_ann, dataset, label_set, info.version)
    return ImportSummary(safe_url(engine.url), dataset, label_set, info.version, n, len(exam_of), n_ann, names)


def _delete_dataset(conn, ds_id: int) -> None:
    import sqlalchemy as sa

    d, ex, im, an = schema.datasets, schema.examinations, schema.images, schema.annotations
    # explicit deletes: SQLite without the foreign-key pragma does not cascade
    img_ids = sa.select(im.c.id).where(im.c.dataset_id == ds_id)
    conn.execute(sa.delete(an).where(an.c.image_id.in_(img_ids)))
    conn.execute(sa.delete(im).where(im.c.dataset_id == ds_id))
    conn.execute(sa.delete(ex).where(ex.c.dataset_id == ds_id))
    conn.execute(sa.delete(d).where(d.c.id == ds_id))


def delete_dataset(engine: Engine, dataset: str) -> None:
    """Delete a dataset with its images, examinations and annotations (label sets are kept).

    Example:
        >>> delete_dataset(engine, "nih1000")  # doctest: +SKIP
    """
    with engine.begin() as conn:
        ds_id, _ = find_dataset(conn, dataset)
        _delete_dataset(conn, ds_id)


def data_config_for_source(source: str | os.PathLike, overrides: Sequence[str] = ()) -> Any:
    """A ``data`` config for a source path: a YAML run config, a class folder, a ``.jsonl`` or a ``.csv`` file.

    ``overrides`` are ``data.key=value`` strings (e.g. ``data.label_column=Finding Labels``).

    Example:
        >>> cfg = data_config_for_source("labels.jsonl", ["data.image_root=images"])  # doctest: +SKIP
    """
    from medlens.config import config_from_dict, load_config

    p = Path(source)
    if p.suffix.lower() in (".yaml", ".yml"):
        return load_config(p, list(overrides)).data
    if p.is_dir():
        raw = {"kind": "folder", "root": str(p.resolve())}
    elif p.suffix.lower() == ".jsonl" or p.name.lower().endswith(".jsonl.gz"):
        raw = {"kind": "jsonl", "path": str(p.resolve())}
    elif p.suffix.lower() == ".csv" or p.name.lower().endswith(".csv.gz"):
        raw = {"kind": "csv", "path": str(p.resolve())}
    elif not p.exists():
        raise FileNotFoundError(f"import source not found: {p}")
    else:
        raise ValueError(f"{p}: cannot import this; give a class folder, a .csv, a .jsonl or a YAML config")
    return config_from_dict({"data": raw}, source=str(p), overrides=list(overrides)).data


def import_dataset(
    source: str | os.PathLike,
    url: str | None,
    dataset: str,
    label_set: str,
    version: int | None = None,
    *,
    overrides: Sequence[str] = (),
    password_env: str | None = DEFAULT_PASSWORD_ENV,
    password_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    replace: bool = False,
) -> ImportSummary:
    """Read a folder, CSV, JSONL (or any YAML data config) and import it (``medlens db import``).

    The schema is created when missing. JSONL groups are examinations; every other source's groups are patients.

    Example:
        >>> import_dataset("data/train", "sqlite:///medlens.db", "pneumonia", "pneumonia")  # doctest: +SKIP
    """
    from medlens.data.readers import read_dataset

    cfg = data_config_for_source(source, overrides)
    table = read_dataset(cfg)
    engine = init_db(url, password_env, password_file)
    try:
        return import_table(
            engine, table, dataset, label_set, version, image_root=image_root,
            groups_are="examination" if cfg.kind == "jsonl" else "patient", replace=replace,
            description=f"imported from {Path(source).name}",
        )
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------- your own schema (read only)
@dataclass
class MappedData:
    """What :func:`read_mapped` read from a database with its own schema (``data.schema``)."""

    ids: np.ndarray  # object: image ids as text
    paths: np.ndarray  # object
    groups: np.ndarray  # object (None where unset)
    splits: np.ndarray  # object (None where unset)
    targets: np.ndarray  # (N, K) over label_names: 1, 0, NaN (no annotation row or a NULL value)
    label_set: dict[str, Any]  # id, name, version, labels [{id, name, index}] -- the full label set


def _mapped_table(name: str, *columns: str | None):
    """A lightweight SQLAlchemy table: every identifier is quoted by the dialect, never pasted into SQL text."""
    import sqlalchemy as sa

    schema_name, _, table = name.rpartition(".")
    cols = list(dict.fromkeys(c for c in columns if c))
    return sa.table(table, *(sa.column(c) for c in cols), schema=schema_name or None)


def read_mapped(conn, mapping: Any, label_set: str, version: int | None = None, chunk_size: int = 5000) -> MappedData:
    """Read images, a label set version and its annotations from an existing schema described by ``mapping``.

    ``mapping`` is :class:`medlens.config.SqlSchema`: table and column names for images, annotations, labels,
    label sets and the label-set/label link table (versions of a label set may share labels). Labels are the
    label set's labels ordered by label id; their position there is the *original index* kept with the run.
    An annotation row with a NULL value, or no row, is unknown; ``annotations.value: null`` in the mapping means
    a row is a positive.

    Example:
        >>> d = read_mapped(conn, cfg.data.schema_, "polyp_classes", 2)  # doctest: +SKIP
    """
    import sqlalchemy as sa

    m = mapping
    ls = _mapped_table(m.label_sets.table, m.label_sets.id, m.label_sets.name, m.label_sets.version)
    lsl = _mapped_table(m.label_set_labels.table, m.label_set_labels.label_set_id, m.label_set_labels.label_id)
    lb = _mapped_table(m.labels.table, m.labels.id, m.labels.name)
    flt = getattr(m, "dataset", None)  # data.schema.dataset: which images form the dataset
    im = _mapped_table(m.images.table, m.images.id, m.images.path, m.images.group, m.images.split,
                       flt.column if flt is not None and flt.table is None else None)
    an = _mapped_table(m.annotations.table, m.annotations.image_id, m.annotations.label_id, m.annotations.value)
    where = f"label set {label_set!r} (table {m.label_sets.table})"
    vcol = ls.c[m.label_sets.version] if m.label_sets.version else sa.literal(None)
    rows = conn.execute(sa.select(ls.c[m.label_sets.id], vcol).where(ls.c[m.label_sets.name] == label_set)).all()
    if not rows:
        have = [r[0] for r in conn.execute(sa.select(ls.c[m.label_sets.name]).distinct().limit(50))]
        raise DatabaseError(f"no {where}; label sets: {sorted(str(h) for h in have) or 'none'}")
    if version is not None:
        rows = [r for r in rows if r[1] is not None and str(r[1]) == str(version)]
        if not rows:
            raise DatabaseError(f"{where} has no version {version}")
    elif len(rows) > 1:
        if any(r[1] is None for r in rows):
            raise DatabaseError(f"{where}: {len(rows)} rows and no version column to choose one; map label_sets.version")
        rows = sorted(rows, key=lambda r: (_version_key(r[1])))[-1:]
    ls_id, ls_version = rows[0]
    label_rows = conn.execute(
        sa.select(lb.c[m.labels.id], lb.c[m.labels.name])
        .select_from(lsl.join(lb, lsl.c[m.label_set_labels.label_id] == lb.c[m.labels.id]))
        .where(lsl.c[m.label_set_labels.label_set_id] == ls_id)
        .order_by(lb.c[m.labels.id])
    ).all()
    if not label_rows:
        raise DatabaseError(f"{where} v{ls_version} has no labels in {m.label_set_labels.table}")
    label_ids = [r[0] for r in label_rows]
    names = [str(r[1]) for r in label_rows]
    info = {"id": _plain(ls_id), "name": label_set, "version": _plain(ls_version),
            "labels": [{"id": _plain(i), "name": n, "index": j} for j, (i, n) in enumerate(zip(label_ids, names, strict=True))]}
    cols = [im.c[m.images.id], im.c[m.images.path]]
    cols.append(im.c[m.images.group] if m.images.group else sa.literal(None))
    cols.append(im.c[m.images.split] if m.images.split else sa.literal(None))
    ids: list[Any] = []
    parts: dict[str, list] = {"paths": [], "groups": [], "splits": []}
    select = sa.select(*cols)
    if flt is not None and flt.table is None:  # an equality on a column of the images table
        select = select.where(im.c[flt.column] == flt.equals)
    elif flt is not None:  # the images a link table lists under one key (endoreg-db's AI datasets)
        link = _mapped_table(flt.table, flt.image_id, flt.column)
        select = select.where(im.c[m.images.id].in_(sa.select(link.c[flt.image_id]).where(link.c[flt.column] == flt.equals)))
    for chunk in _stream(conn, select.order_by(im.c[m.images.id]), chunk_size):
        for r in chunk:
            ids.append(r[0])
            parts["paths"].append(r[1])
            parts["groups"].append(None if r[2] is None else str(r[2]))
            parts["splits"].append(r[3])
    row_of = {i: j for j, i in enumerate(ids)}
    col_of = {i: j for j, i in enumerate(label_ids)}
    targets = np.full((len(ids), len(label_ids)), np.nan, dtype=np.float32)
    value = an.c[m.annotations.value] if m.annotations.value else sa.literal(True)
    stmt = sa.select(an.c[m.annotations.image_id], an.c[m.annotations.label_id], value).where(
        an.c[m.annotations.label_id].in_(label_ids))
    for chunk in _stream(conn, stmt, chunk_size):
        for img, lab, val in chunk:
            r = row_of.get(img)
            if r is not None and val is not None:
                targets[r, col_of[lab]] = 1.0 if val in (True, 1, "1", "t", "true", "True") else 0.0
    obj = lambda x: np.asarray(x, dtype=object)  # noqa: E731
    return MappedData(obj([str(i) for i in ids]), obj(parts["paths"]), obj(parts["groups"]), obj(parts["splits"]), targets, info)


def _version_key(v: Any) -> tuple[int, Any]:
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        return (1, str(v))


def _plain(v: Any) -> Any:
    return v if isinstance(v, int | float | str) or v is None else str(v)
