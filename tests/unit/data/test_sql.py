"""``kind: sql`` and :mod:`medlens.data.db`: schema, import, streaming reads, label set versions, credentials."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("sqlalchemy")

import sqlalchemy as sa  # noqa: E402

from medlens.cli import app  # noqa: E402
from medlens.config import config_from_dict  # noqa: E402
from medlens.data import db  # noqa: E402
from medlens.data.labels import LabelError, LabelSpace  # noqa: E402
from medlens.data.readers import read_dataset  # noqa: E402
from medlens.data.samples import SampleTable  # noqa: E402


def sql_cfg(url: str, **kw):
    return config_from_dict({"data": {"kind": "sql", "url": url, "dataset": "d", "label_set": "ls", **kw}}).data


def make_table(root: Path, n: int = 12) -> SampleTable:
    """n images; labels a/b/c with some unknown entries; two images per patient; predefined splits."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img{i:03d}.png"
        Image.fromarray(np.full((8, 8), i * 10 % 255, np.uint8)).save(p)
        paths.append(str(p))
    rng = np.random.default_rng(0)
    t = (rng.random((n, 3)) < 0.4).astype(np.float32)
    t[:, 0] = np.arange(n) % 2  # a: every other image
    t[0, 1] = t[5, 2] = np.nan  # not annotated
    t[:, 2] = np.where(np.isnan(t[:, 2]), np.nan, 0.0)  # c: never positive
    t[3, 1] = 1.0
    splits = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
    import pandas as pd

    meta = pd.DataFrame({"age": [40 + i for i in range(n)], "sex": ["F", "M"] * (n // 2)})
    return SampleTable(LabelSpace(("a", "b", "c"), "multilabel"), [f"img{i:03d}" for i in range(n)], paths, t,
                       [f"p{i // 2}" for i in range(n)], splits, meta, source="test")


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[str, SampleTable]:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    table = make_table(tmp_path / "images")
    engine = db.init_db(url)
    db.import_table(engine, table, "d", "ls")
    engine.dispose()
    return url, table


def test_roundtrip_gives_the_same_samples(sqlite_db, caplog: pytest.LogCaptureFixture) -> None:
    url, src = sqlite_db
    with caplog.at_level(logging.WARNING):
        t = read_dataset(sql_cfg(url, metadata_fields=["age", "sex"]))
    # 'c' has no positive image: dropped with a warning naming it
    assert t.label_space.names == ("a", "b") and "'c'" in caplog.text
    assert t.ids.tolist() == src.ids.tolist()
    assert t.images.tolist() == src.images.tolist()
    np.testing.assert_array_equal(t.targets, src.targets[:, :2])  # NaN where no annotation row exists
    assert np.isnan(t.targets[0, 1])
    assert t.groups.tolist() == src.groups.tolist()
    assert t.splits.tolist() == src.splits.tolist()
    assert t.metadata["age"].tolist() == src.metadata["age"].tolist()


def test_absent_annotation_is_unknown_or_negative_on_request(sqlite_db) -> None:
    url, _ = sqlite_db
    t = read_dataset(sql_cfg(url, unknown_labels="negative"))
    assert t.targets[0, 1] == 0.0 and not np.isnan(t.targets).any()


def test_small_chunks_stream_the_same_result(sqlite_db) -> None:
    url, _ = sqlite_db
    a = read_dataset(sql_cfg(url, chunk_size=5000))
    b = read_dataset(sql_cfg(url, chunk_size=5))
    np.testing.assert_array_equal(a.targets, b.targets)
    assert a.ids.tolist() == b.ids.tolist()


def test_label_set_versions_and_label_names(sqlite_db) -> None:
    url, src = sqlite_db
    engine = db.connect(url)
    renamed = SampleTable(LabelSpace(("a", "b", "d"), "multilabel"), src.ids, src.images, np.nan_to_num(src.targets, nan=1.0), src.groups, src.splits)
    s = db.import_table(engine, renamed, "d2", "ls")
    assert s.version == 2  # different labels: a new version
    s_same = db.import_table(engine, renamed, "d3", "ls")
    assert s_same.version == 2  # identical labels: reused
    with pytest.raises(db.DatabaseError, match="version 1 has labels"):
        db.import_table(engine, renamed, "d4", "ls", version=1)
    engine.dispose()
    newest = read_dataset(sql_cfg(url, dataset="d2"))
    assert newest.label_space.names == ("a", "b", "d")
    # dataset d holds annotations of version 1 only: asking for version 2 finds none of them
    v1 = read_dataset(sql_cfg(url, label_set_version=1, label_names=["b", "a"]))
    assert v1.label_space.names == ("b", "a")
    with pytest.raises(LabelError, match="'zzz'"):
        read_dataset(sql_cfg(url, label_names=["a", "zzz"]))
    with pytest.raises(db.DatabaseError, match="no version 7; versions: \\[1, 2\\]"):
        read_dataset(sql_cfg(url, label_set_version=7))


def test_unknown_dataset_and_label_set_list_what_exists(sqlite_db) -> None:
    url, _ = sqlite_db
    with pytest.raises(db.DatabaseError, match=r"no dataset named 'nope'.*\['d'\]"):
        read_dataset(sql_cfg(url, dataset="nope"))
    with pytest.raises(db.DatabaseError, match=r"no label set named 'x'.*\['ls'\]"):
        read_dataset(sql_cfg(url, label_set="x"))


def test_existing_dataset_needs_replace(sqlite_db) -> None:
    url, src = sqlite_db
    engine = db.connect(url)
    with pytest.raises(db.DatabaseError, match="already exists.*--replace"):
        db.import_table(engine, src, "d", "ls")
    db.import_table(engine, src.subset(np.arange(4)), "d", "ls", replace=True)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.schema.images)).scalar() == 4
        assert c.execute(sa.select(sa.func.count()).select_from(db.schema.examinations)).scalar() == 2
    engine.dispose()


def test_missing_image_is_an_error_or_a_listed_skip(sqlite_db, caplog: pytest.LogCaptureFixture) -> None:
    url, src = sqlite_db
    Path(src.images[4]).unlink()
    with pytest.raises(FileNotFoundError, match="img004"):
        read_dataset(sql_cfg(url))
    with caplog.at_level(logging.WARNING):
        t = read_dataset(sql_cfg(url, on_bad_image="skip"))
    assert len(t) == len(src) - 1 and "img004" in caplog.text


def test_relative_paths_resolve_against_the_stored_image_root(tmp_path: Path) -> None:
    table = make_table(tmp_path / "imgs", n=6)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = db.init_db(url)
    db.import_table(engine, table, "d", "ls", image_root=tmp_path / "imgs")
    with engine.connect() as c:
        assert c.execute(sa.select(db.schema.images.c.path).limit(1)).scalar() == "img000.png"
    engine.dispose()
    t = read_dataset(sql_cfg(url))
    assert t.images.tolist() == table.images.tolist()
    moved = read_dataset(sql_cfg(url, image_root=str(tmp_path / "imgs")))
    assert moved.images.tolist() == table.images.tolist()


def test_sqlite_file_must_exist_and_hold_the_schema(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="medlens db init"):
        read_dataset(sql_cfg(f"sqlite:///{tmp_path / 'none.db'}"))
    assert not (tmp_path / "none.db").exists()  # reading never creates a database
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    with pytest.raises(db.DatabaseError, match="no medlens schema.*medlens db init"):
        read_dataset(sql_cfg(f"sqlite:///{empty}"))


def test_no_url_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDLENS_DB_URL", raising=False)
    with pytest.raises(db.DatabaseError, match="no database URL"):
        db.resolve_url(None)


def test_url_from_environment(monkeypatch: pytest.MonkeyPatch, sqlite_db) -> None:
    url, _ = sqlite_db
    monkeypatch.setenv("MEDLENS_DB_URL", url)
    t = read_dataset(config_from_dict({"data": {"kind": "sql", "dataset": "d", "label_set": "ls"}}).data)
    assert len(t) == 12


# ------------------------------------------------------------------ passwords
def test_password_from_env_or_file_never_in_safe_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPW_TEST", "s3cr3t!")
    u = db.resolve_url("postgresql://alice@db.example.org:5432/pacs", password_env="PGPW_TEST")
    assert u.password == "s3cr3t!" and u.drivername == "postgresql+psycopg"
    assert "s3cr3t" not in db.safe_url(u) and "***" in db.safe_url(u)
    pf = tmp_path / "pw"
    pf.write_text("from-file\n")
    u2 = db.resolve_url("postgresql://alice@db/pacs", password_env="UNSET_VAR_XYZ", password_file=pf)
    assert u2.password == "from-file"
    with pytest.raises(FileNotFoundError, match="password file not found"):
        db.resolve_url("postgresql://alice@db/pacs", password_env="UNSET_VAR_XYZ", password_file=tmp_path / "nope")
    assert "hunter2" not in db.safe_url_text("postgresql://bob:hunter2@h/db")


def test_a_redacted_url_from_a_saved_config_takes_the_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # config.yaml and the manifest keep data.url as user:***@host: "***" is no password, the variable fills it in
    monkeypatch.setenv("PGPW_TEST", "s3cr3t!")
    u = db.resolve_url("postgresql://alice:***@db/pacs", password_env="PGPW_TEST")
    assert u.password == "s3cr3t!"
    u = db.resolve_url("postgresql://alice@db/pacs?password=***&sslmode=require", password_env="PGPW_TEST")
    assert u.password == "s3cr3t!" and dict(u.query) == {"sslmode": "require"}


class FakePostgres:
    """A socket that speaks just enough of the PostgreSQL protocol to refuse a password (SQLSTATE 28P01)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.passwords: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _recv(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    n, code = struct.unpack("!ii", self._recv(conn, 8))
                    self._recv(conn, n - 8)
                    if code in (80877103, 80877104):  # SSLRequest / GSSENCRequest: not supported
                        conn.sendall(b"N")
                        continue
                    break
                conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                self._recv(conn, 1)
                (n,) = struct.unpack("!i", self._recv(conn, 4))
                self.passwords.append(self._recv(conn, n - 4).rstrip(b"\0"))
                fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "alice"\0\0'
                conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
        except (ConnectionError, OSError):
            pass

    def close(self) -> None:
        self.sock.close()


def test_wrong_password_is_a_clear_error_without_the_password(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("psycopg")
    server = FakePostgres()
    monkeypatch.setenv("MEDLENS_DB_PASSWORD", "wrong-pw-123")
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(db.DatabaseError) as e:
            read_dataset(sql_cfg(f"postgresql+psycopg://alice@127.0.0.1:{server.port}/pacs"))
    finally:
        server.close()
    msg = str(e.value)
    assert "refused the password for user 'alice'" in msg
    assert server.passwords == [b"wrong-pw-123"]  # the password did reach the server...
    assert "wrong-pw-123" not in msg and "wrong-pw-123" not in caplog.text  # ...but is never shown


def test_unreachable_server_is_a_clear_error() -> None:
    pytest.importorskip("psycopg")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with pytest.raises(db.DatabaseError, match=rf"cannot reach the database server at 127.0.0.1:{port}"):
        read_dataset(sql_cfg(f"postgresql+psycopg://alice:pw@127.0.0.1:{port}/pacs"))


# ------------------------------------------------------------------ CLI
def test_cli_db_init_and_import_folder_and_jsonl(tmp_path: Path) -> None:
    for c in ("normal", "tumour"):
        (tmp_path / "fold" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 50, np.uint8)).save(tmp_path / "fold" / c / f"{c}{i}.png")
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    r = runner.invoke(app, ["db", "init", "--url", url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["db", "import", str(tmp_path / "fold"), "--url", url, "--dataset", "f", "--label-set", "tumour"])
    assert r.exit_code == 0, r.output
    assert "imported 6 images" in r.output
    t = read_dataset(sql_cfg(url, dataset="f", label_set="tumour", task="binary"))
    assert t.label_space.names == ("normal", "tumour") and t.class_index().tolist() == [0, 0, 0, 1, 1, 1]
    lines = [f'{{"filename": "fold/normal/normal{i}.png", "labels": ["a"], "exam": {i}}}' for i in range(3)]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["db", "import", str(tmp_path / "x.jsonl"), "--url", url, "--dataset", "j", "--label-set", "j",
                            "--set", "data.group_field=exam"])
    assert r.exit_code == 0, r.output
    t = read_dataset(sql_cfg(url, dataset="j", label_set="j", group_by="examination"))
    assert t.groups.tolist() == ["0", "1", "2"]
    r = runner.invoke(app, ["db", "import", str(tmp_path / "x.jsonl"), "--url", url, "--dataset", "j", "--label-set", "j"])
    assert r.exit_code == 2 and "already exists" in r.output
